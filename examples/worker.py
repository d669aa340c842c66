#!/usr/bin/env python3
"""A cairn remote worker in plain Python (standard library only).

It long-polls a cairn server for tasks of one or more agent types, heartbeats the lease in a
thread while it works, does a toy "research" action and reports the result:

    CAIRN_TOKEN=… python3 examples/worker.py --server http://127.0.0.1:8080 --agent-type research

Create a worker token with `cairn token create --user my-worker --role worker`. The task it gets
is JSON with task_id, plan_id, step_id, action, agent_type, params, attempt, idempotency_key,
lease_ms (and run, query); it answers POST /v1/tasks/{task_id}/complete {worker_id, output,
scores?} or /fail {worker_id, error, retryable}. Ctrl-C stops it.
"""

import argparse
import json
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.request


def call(server, token, path, body, timeout):
    """POST JSON; returns (status, parsed body or None)."""
    req = urllib.request.Request(
        server.rstrip("/") + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer " + token},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, None


def research(task):
    """The toy action: 'find' a few sources about the step's topic."""
    topic = task.get("params", {}).get("topic") or task.get("query") or "nothing"
    sources = ["https://example.org/%s/%d" % (topic, i) for i in range(3)]
    return {"output": {"topic": topic, "found": len(sources), "sources": sources},
            "scores": {"coverage": 0.8}}


def heartbeat(server, token, worker_id, task, done, stop):
    period = max(task.get("lease_ms", 30000) / 3000.0, 0.05)
    while not done.wait(period):
        try:
            status, answer = call(server, token, "/v1/tasks/%s/heartbeat" % task["task_id"],
                                  {"worker_id": worker_id}, timeout=period)
        except OSError as e:
            print("heartbeat failed (%s); will try again" % e, file=sys.stderr)
            continue
        if status != 200 or (answer or {}).get("stop"):
            stop.set()
            return


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default=os.environ.get("CAIRN_SERVER", "http://127.0.0.1:8080"))
    ap.add_argument("--agent-type", action="append", required=True)
    ap.add_argument("--worker-id", default="%s-py-%d" % (socket.gethostname(), os.getpid()))
    ap.add_argument("--once", action="store_true", help="exit after one task")
    args = ap.parse_args()
    token = os.environ.get("CAIRN_TOKEN", "")
    backoff = 0.5
    while True:
        try:
            status, task = call(args.server, token, "/v1/tasks/poll",
                                {"worker_id": args.worker_id, "agent_types": args.agent_type,
                                 "wait_ms": 30000}, timeout=45)
        except OSError as e:
            print("server unreachable (%s); retrying in %.1f s" % (e, backoff), file=sys.stderr)
            time.sleep(backoff)
            backoff = min(backoff * 2, 30)
            continue
        backoff = 0.5
        if status == 204:
            continue
        if status in (401, 403):
            sys.exit("the server refused the token (%d): %s" % (status, task))
        if status != 200:
            sys.exit("poll failed (%d): %s" % (status, task))
        done, stop = threading.Event(), threading.Event()
        hb = threading.Thread(target=heartbeat,
                              args=(args.server, token, args.worker_id, task, done, stop),
                              daemon=True)
        hb.start()
        try:
            result = research(task)
            path, body = "complete", dict(result, worker_id=args.worker_id)
        except Exception as e:  # noqa: BLE001 - report any failure of the action
            path, body = "fail", {"worker_id": args.worker_id, "error": str(e), "retryable": True}
        done.set()
        hb.join()
        if stop.is_set():
            path, body = "fail", {"worker_id": args.worker_id, "error": "stopped", "retryable": True}
        status, answer = call(args.server, token, "/v1/tasks/%s/%s" % (task["task_id"], path),
                              body, timeout=30)
        print("task %s (%s/%s): %s -> %d" % (task["task_id"], task["plan_id"], task["step_id"],
                                            path, status), file=sys.stderr)
        if args.once:
            return


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
