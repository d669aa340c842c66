"""The low-level clients against a real server: errors, versions and dry runs, events and
streams resumed by id, checkpoints and forks, reviews, templates, tokens, tasks."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Dict, List

import httpx
import pytest

from cairn import (
    ApiError,
    AsyncClient,
    AuthenticationError,
    Client,
    ConflictError,
    NotFoundError,
    OrchestrationController,
    PermissionDeniedError,
    StepResult,
    UnprocessableError,
)
from cairn import _http
from conftest import USER, Server
from test_examples import BOUND, run


def echo_plan(plan_id: str, n: int = 3) -> Dict[str, Any]:
    return {
        "plan_id": plan_id,
        "query": "echo",
        "steps": [
            {"step_id": f"s{i}", "action": "echo", "agent_type": "builtin.echo", "params": {"i": i}}
            for i in range(1, n + 1)
        ],
    }


def test_errors_carry_status_code_and_message(server: Server) -> None:
    with Client(server.url, token=server.token) as c:
        with pytest.raises(NotFoundError) as missing:
            c.get_plan("nope")
        assert (missing.value.status, missing.value.code) == (404, "plan_not_found")
        assert "nope" in missing.value.message

        with pytest.raises(UnprocessableError) as invalid:
            c.create_plan({"plan_id": "bad", "steps": [
                {"step_id": "a", "action": "x", "agent_type": "t", "depends_on": ["ghost"]}]})
        assert invalid.value.code == "invalid_plan"
        assert "ghost" in invalid.value.message

        c.create_plan(echo_plan("p1"))
        with pytest.raises(ConflictError) as exists:
            c.create_plan(echo_plan("p1"))
        assert exists.value.code == "plan_exists"

        # A refused intervention is recorded; the error carries its record.
        c.skip_step("p1", "s2")
        with pytest.raises(ConflictError) as refused:
            c.skip_step("p1", "s2")
        assert refused.value.intervention is not None
        assert refused.value.intervention["status"] == "failed"
        assert [i["status"] for i in c.list_interventions("p1").items] == ["applied", "failed"]

        with pytest.raises(ConflictError):
            c.pause_plan("p1")  # not running

    with Client(server.url, token="cairn_not_a_token") as bad:
        with pytest.raises(AuthenticationError) as unauthorised:
            bad.list_plans()
        assert unauthorised.value.status == 401

    viewer = server.make_token("viewer-1", "viewer")
    with Client(server.url, token=viewer) as v:
        assert v.whoami() == {"user": "viewer-1", "role": "viewer"}
        assert v.get_plan("p1")["plan_id"] == "p1"
        with pytest.raises(PermissionDeniedError) as denied:
            v.start_plan("p1")
        assert denied.value.status == 403


def test_expected_version_and_dry_run(server: Server) -> None:
    with Client(server.url, token=server.token) as c:
        view = c.create_plan(echo_plan("v1"))
        version = view["version"]
        dry = c.add_step("v1", {"step_id": "x", "action": "echo", "agent_type": "builtin.echo"},
                         after="s1", dry_run=True)
        assert dry["status"] == "would_apply"
        assert dry["diff"], "a dry run answers the diff it would make"
        assert c.get_plan("v1")["total_steps"] == 3, "a dry run changes nothing"

        applied = c.add_step("v1", {"step_id": "x", "action": "echo", "agent_type": "builtin.echo"},
                             after="s1", expected_version=version)
        assert applied["plan_version"] == version + 1
        with pytest.raises(ConflictError):
            c.remove_step("v1", "x", expected_version=version)  # stale: lost-update refused
        c.reorder_steps("v1", ["s1", "s2", "x", "s3"], expected_version=version + 1)
        c.modify_step("v1", "s3", {"params": {"i": 33}})
        steps = c.get_plan("v1")["steps"]
        assert [s["step_id"] for s in steps] == ["s1", "s2", "x", "s3"]
        assert c.get_step("v1", "s3")["definition"]["params"] == {"i": 33}
        versions = c.list_versions("v1")
        assert len(versions) >= 3
        diff = c.diff_versions("v1", version, version + 1)
        assert diff["plan_id"] == "v1"
        assert c.get_version("v1", version)["version"] == version


def test_events_paged_and_streams_resumed_by_id(server: Server) -> None:
    with Client(server.url, token=server.token) as c:
        c.create_plan(echo_plan("e1"))
        c.start_plan("e1")
        c.wait_for_state("e1", "completed", timeout=BOUND)

        paged: List[Dict[str, Any]] = []
        after = None
        while True:
            page = c.list_events("e1", after=after, limit=2)
            paged.extend(page.items)
            if not page.next_cursor:
                break
            after = int(page.next_cursor)
        seqs = [e["seq"] for e in paged]
        assert seqs == list(range(1, len(seqs) + 1)), "seq is contiguous from 1"
        assert paged[-1]["type"] == "plan_completed"

        # A plan's stream: its history, then it ends after an ended plan's last event.
        streamed = list(c.stream_events("e1"))
        assert [e["seq"] for e in streamed] == seqs
        # Resumed after a seq (what Last-Event-ID does after a dropped connection).
        resumed = list(c.stream_events("e1", after=4))
        assert [e["seq"] for e in resumed] == seqs[4:]

        # The all-plans stream from a global id.
        first_global = paged[0]["id"]
        got: List[Dict[str, Any]] = []
        for e in c.stream_events(after=first_global):
            got.append(dict(e))
            if e["type"] == "plan_completed":
                break
        assert [e["seq"] for e in got] == seqs[1:]


def test_async_stream_resumes_across_a_server_restart(server: Server) -> None:
    """An async all-plans stream keeps going when the server is killed and restarted: it
    resumes after the last id it received, skipping and repeating nothing."""

    async def main() -> None:
        async with AsyncClient(server.url, token=server.token) as c:
            await c.create_plan(echo_plan("r1", 2))
            received: List[Dict[str, Any]] = []
            reconnects: List[BaseException] = []
            first_done = asyncio.Event()

            async def follow() -> None:
                async for e in c.stream_events(after=0, on_reconnect=reconnects.append):
                    received.append(dict(e))
                    if e["plan_id"] == "r1" and e["type"] == "plan_completed":
                        first_done.set()
                    if e["plan_id"] == "r2" and e["type"] == "plan_completed":
                        return

            reader = asyncio.create_task(follow())
            await c.start_plan("r1")
            await asyncio.wait_for(first_done.wait(), BOUND)
            await asyncio.to_thread(server.kill)
            await asyncio.to_thread(server.start)
            await c.create_plan(echo_plan("r2", 2))
            await c.start_plan("r2")
            await asyncio.wait_for(reader, BOUND)
            assert reconnects, "the stream saw the server go"
            ids = [e["id"] for e in received]
            assert ids == sorted(set(ids)), "no event repeated or out of order"
            for plan in ("r1", "r2"):
                seqs = [e["seq"] for e in received if e["plan_id"] == plan]
                assert seqs == list(range(1, len(seqs) + 1)), f"{plan}: no event skipped"

    run(main())


def test_checkpoints_fork_and_manual(server: Server) -> None:
    with Client(server.url, token=server.token) as c:
        c.create_plan(echo_plan("c1", 2))
        c.start_plan("c1")
        c.wait_for_state("c1", "completed", timeout=BOUND)
        manual = c.create_checkpoint("c1", label="before-audit")
        assert manual["trigger"] == "manual"
        assert manual["label"] == "before-audit"
        cps = c.list_checkpoints("c1").items
        assert [cp["trigger"] for cp in cps] == ["initial", "step", "step", "manual"]
        after_first = c.get_checkpoint("c1", cps[1]["checkpoint_id"])
        assert after_first["completed_steps"] == ["s1"]
        assert after_first["context"] == {"s1": {"i": 1}}

        fork = c.fork_checkpoint("c1", cps[1]["checkpoint_id"], new_plan_id="c1-fork")
        assert (fork["plan_id"], fork["state"]) == ("c1-fork", "paused")
        assert fork["completed_steps"] == ["s1"]
        c.resume_plan("c1-fork")
        assert c.wait_for_state("c1-fork", "completed", timeout=BOUND)["completed_steps"] == [
            "s1", "s2"]

        snap = c.snapshot("c1")
        assert snap["state"] == "completed"
        assert len(snap["checkpoints"]) == 4

        summaries = c.list_plans(limit=1)
        assert len(summaries.items) == 1 and summaries.next_cursor
        assert c.list_plans(id_contains="fork").items[0]["plan_id"] == "c1-fork"
        c.delete_plan("c1-fork")
        with pytest.raises(NotFoundError):
            c.get_plan("c1-fork")


def test_quality_gate_review_from_python(server: Server) -> None:
    async def main() -> None:
        async with OrchestrationController(server.url, token=server.token) as controller:
            controller.register_plan("gated", {"steps": [
                {"step_id": "draft", "action": "write", "agent_type": "writer",
                 "quality_gate": {"min_scores": {"coverage": 0.8}, "on_fail": "review"}},
                {"step_id": "publish", "action": "publish", "agent_type": "builtin.echo"},
            ]})

            def writer(step: Dict[str, Any]) -> StepResult:
                return StepResult(output={"brief": "half"}, scores={"coverage": 0.5})

            execution = asyncio.create_task(controller.execute_plan_async("gated", writer))
            state = await controller.client.wait_for_state("gated", "paused", timeout=BOUND)
            assert state["pause_reason"] == "review_required"
            reviews = await controller.list_reviews(plan_id="gated")
            assert len(reviews) == 1
            assert reviews[0]["step_id"] == "draft"
            assert reviews[0]["scores"] == {"coverage": 0.5}
            assert reviews[0]["output"] == {"brief": "half"}

            decision = await controller.approve_step("gated", "draft", reason="good enough")
            assert decision.status == "applied"
            assert decision.user == USER
            result = await asyncio.wait_for(execution, BOUND)
            assert result["state"] == "completed"
            assert await controller.list_reviews(plan_id="gated") == []
            closed = await controller.list_reviews(plan_id="gated", state="closed")
            assert closed[0]["votes"][0]["user"] == USER

    run(main())


def test_templates_and_tokens(server: Server) -> None:
    with Client(server.url, token=server.token) as c:
        pushed = c.push_template(
            "brief",
            {"query": "brief on {{ inputs.topic }}", "steps": [
                {"step_id": "s", "action": "echo", "agent_type": "builtin.echo",
                 "params": {"topic": "{{ inputs.topic }}"}}]},
            parameters={"type": "object", "required": ["topic"],
                        "properties": {"topic": {"type": "string"}}},
            description="a one-step brief",
        )
        assert (pushed["name"], pushed["version"], pushed["created"]) == ("brief", 1, True)
        assert c.get_template("brief")["latest"]["version"] == 1
        assert c.get_template_version("brief", 1)["description"] == "a one-step brief"
        assert [t["name"] for t in c.list_templates().items] == ["brief"]
        with pytest.raises(UnprocessableError) as bad_inputs:
            c.instantiate_template("brief", inputs={})
        assert bad_inputs.value.code == "invalid_inputs"
        plan = c.instantiate_template("brief", inputs={"topic": "solar"}, plan_id="t1")
        assert plan["plan_id"] == "t1"
        done = c.wait_for_state("t1", "completed", timeout=BOUND)
        assert done["template"] == {"name": "brief", "version": 1}

        made = c.create_token("ops", "operator")
        assert made["token"] and made["role"] == "operator"
        assert "ops" in [t["user"] for t in c.list_tokens().items]
        with Client(server.url, token=made["token"]) as ops:
            assert ops.whoami()["user"] == "ops"
        c.delete_token(made["id"])
        with Client(server.url, token=made["token"]) as ops:
            with pytest.raises(AuthenticationError):
                ops.whoami()

        assert c.healthz()
        assert c.readyz()
        assert "cairn" in c.metrics()
        assert "/v1/plans" in c.openapi()["paths"]
        assert c.list_nodes()[0]["alive"]


def test_tasks_by_hand(server: Server) -> None:
    """The worker protocol through the low-level client: poll, heartbeat, fail, complete."""
    with Client(server.url, token=server.token) as c:
        assert c.poll_task("w1", ["hand"], wait_ms=0) is None
        c.create_plan({"plan_id": "h1", "steps": [
            {"step_id": "s", "action": "a", "agent_type": "hand", "params": {"q": 1},
             "retry": {"max_attempts": 2, "backoff_ms": 1}}]})
        c.start_plan("h1")
        assert c.poll_task("w1", ["hand"], wait_ms=0, plan_ids=["other"]) is None
        task = c.poll_task("w1", ["hand"], wait_ms=10_000, plan_ids=["h1"])
        assert task is not None
        assert (task["plan_id"], task["step_id"], task["attempt"]) == ("h1", "s", 1)
        assert task["params"] == {"q": 1}
        beat = c.heartbeat(task["task_id"], "w1")
        assert beat["stop"] is False
        with pytest.raises(ApiError) as wrong:
            c.heartbeat(task["task_id"], "someone-else")
        assert wrong.value.code == "not_lease_holder"
        c.fail_task(task["task_id"], "w1", "try again")
        again = c.poll_task("w1", ["hand"], wait_ms=10_000)
        assert again is not None and again["attempt"] == 2
        workers = c.list_workers().items
        assert workers[0]["worker_id"] == "w1"
        c.complete_task(again["task_id"], "w1", output={"answer": 42}, scores={"q": 1.0})
        assert c.wait_for_state("h1", "completed", timeout=BOUND)["completed_steps"] == ["s"]
        with pytest.raises(NotFoundError):
            c.complete_task(again["task_id"], "w1", output={})


def test_retries_only_where_safe() -> None:
    get = _http.get("/v1/plans", _http._json)
    post = _http.post("/v1/plans/p/pause", _http._json)
    refused = httpx.ConnectError("connection refused")
    broken = httpx.ReadError("connection reset")
    assert _http.should_retry(get, refused, None)
    assert _http.should_retry(post, refused, None), "nothing was sent: safe for any method"
    assert _http.should_retry(get, broken, None)
    assert not _http.should_retry(post, broken, None), "a POST may have been applied"
    assert _http.should_retry(get, None, 503)
    assert not _http.should_retry(post, None, 503)
    assert not _http.should_retry(get, None, 404)


def test_connection_refused_is_retried_then_raised() -> None:
    from cairn import TransportError
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    calls = {"n": 0}

    def count(request: httpx.Request) -> None:
        calls["n"] += 1

    c = Client(f"http://127.0.0.1:{port}", retries=2, retry_backoff=0.01, timeout=2)
    c._http.event_hooks["request"] = [count]
    with pytest.raises(TransportError):
        c.get_plan("x")
    assert calls["n"] == 3
    c.close()
    threading.Event()  # keep the import used on every Python


def test_controller_tokens_by_role_and_the_recorded_user(server: Server) -> None:
    """Serving steps needs the worker role; the audit records the token's user, never `user=`."""
    operator = server.make_token("op", "operator")
    worker = server.make_token("w", "worker")

    async def main() -> None:
        plan = {"steps": [
            {"step_id": "a", "action": "x", "agent_type": "roles"},
            {"step_id": "b", "action": "y", "agent_type": "roles"},
        ]}
        async with OrchestrationController(server.url, token=operator) as c:
            c.register_plan("roles", plan)
            with pytest.warns(UserWarning, match="token's user 'op'"):
                record = await c.skip_step("roles", "b", user="admin@veritas.com")
            assert record.user == "op"
            with pytest.raises(PermissionDeniedError) as denied:
                await c.execute_plan_async("roles", lambda step: {})
            assert denied.value.status == 403
        async with OrchestrationController(server.url, token=operator, worker_token=worker) as c:
            result = await c.execute_plan_async("roles", lambda step: {"served": step["step_id"]})
            assert result["state"] == "completed"
            step = await c.client.get_step("roles", "a")
            assert step["output"] == {"served": "a"}
            assert step["attempts"][0]["worker_id"] == c.worker_id

    run(main())


def test_complete_by_hand_then_rerun_from(server: Server) -> None:
    async def main() -> None:
        async with OrchestrationController(server.url, token=server.token) as controller:
            controller.register_plan("m", {"steps": [
                {"step_id": "a", "action": "fetch", "agent_type": "hand"},
                {"step_id": "b", "action": "echo", "agent_type": "builtin.echo",
                 "params": {"v": "{{ steps.a.output.x }}"}},
            ]})
            await controller.client.start_plan("m")
            done_by_hand = await controller.complete_step("m", "a", {"x": 1}, reason="by hand")
            assert done_by_hand.status == "applied"
            await controller.client.wait_for_state("m", "completed", timeout=BOUND)

            rerun = await controller.rerun_from("m", "a", reason="fetch it for real")
            assert {"steps.a.status", "steps.b.status"} <= {d["path"] for d in rerun.diff}
            state = controller.get_state("m")
            assert (state["state"], state["pause_reason"]) == ("paused", "intervention")

            keys: List[str] = []

            def fetch(step: Dict[str, Any]) -> Dict[str, Any]:
                keys.append(step["idempotency_key"])
                return {"x": 2}

            execution = asyncio.create_task(controller.execute_plan_async("m", fetch))
            await controller.resume_plan("m")
            result = await asyncio.wait_for(execution, BOUND)
            assert result["state"] == "completed"
            assert keys == ["m/a/2"], "a rerun is a new run: a new idempotency key"
            attempts = (await controller.client.list_attempts("m", steps="a")).items[0]["attempts"]
            assert [a["outcome"] for a in attempts] == ["completed_by_hand", "completed"]
            snap = await controller.get_snapshot_async("m")
            assert {s["step_id"]: s["output"] for s in snap.steps}["b"]["v"] in (2, "2")

    run(main())


def test_reject_with_retry_sends_the_note_as_gate_feedback(server: Server) -> None:
    async def main() -> None:
        async with OrchestrationController(server.url, token=server.token) as controller:
            controller.register_plan("rejected", {"steps": [
                {"step_id": "draft", "action": "write", "agent_type": "writer2",
                 "quality_gate": {"min_scores": {"coverage": 0.8}, "on_fail": "review"}},
            ]})
            feedback: List[Any] = []

            def writer(step: Dict[str, Any]) -> Dict[str, Any]:
                feedback.append(step.get("gate_feedback"))
                covered = 0.5 if step["attempt"] == 1 else 1.0
                return {"output": {"brief": step["attempt"]}, "scores": {"coverage": covered}}

            execution = asyncio.create_task(controller.execute_plan_async("rejected", writer))
            await controller.client.wait_for_state("rejected", "paused", timeout=BOUND)
            [review] = await controller.list_reviews(plan_id="rejected")
            decision = await controller.reject_step(
                "rejected", "draft", "cover the risks", attempt=review["attempt"], retry=True
            )
            assert decision.intervention_type == "reject_step"
            result = await asyncio.wait_for(execution, BOUND)
            assert result["state"] == "completed"
            assert feedback[0] is None
            assert "cover the risks" in str(feedback[1])
            step = await controller.client.get_step("rejected", "draft")
            assert step["output"] == {"brief": 2}

    run(main())
