#!/usr/bin/env python3
"""A cairn agent in plain Python (standard library only): a toy "research" action.

cairn runs it once per attempt, as a `command` agent or behind `cairn worker`:

    cairn worker --server http://127.0.0.1:8080 --agent-type research -- python3 examples/agents/research.py

It reads the task JSON on stdin (plan_id, step_id, action, agent_type, params, attempt, run,
idempotency_key, query), writes `{"output": ..., "scores": {...}}` on stdout and exits 0. A
non-zero exit fails the attempt; the end of stderr is the error the plan records.
"""

import json
import sys


def main():
    task = json.load(sys.stdin)
    params = task.get("params") or {}
    topic = params.get("topic") or params.get("q") or task.get("query") or "nothing"
    if params.get("fail"):
        print("research failed: %s" % params["fail"], file=sys.stderr)
        return 1
    sources = ["https://example.org/%s/%d" % (str(topic).replace(" ", "-"), i) for i in range(3)]
    json.dump({"output": {"topic": topic, "action": task.get("action"),
                          "found": len(sources), "sources": sources},
               "scores": {"coverage": 0.8}}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
