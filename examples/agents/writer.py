#!/usr/bin/env python3
"""A cairn agent that scores its own work (standard library only), for examples/gated.yaml.

It drafts a brief on `params.topic` that should cover every point of `params.must_cover`, and
reports how much it covered as a score, so a quality gate can judge it:

    {"output": {"brief": ..., "covered": [...], "missing": [...]},
     "scores": {"coverage": <covered / must_cover>, "cost_usd": <what the attempt cost>}}

Like a real model it does better when told what was wrong: each attempt covers one more point
than the one before (attempt 1 covers `params.start`, default 2), and when the task carries
`gate_feedback` (the criteria the last attempt failed, or a reviewer's note after a rejection
with retry) the brief says what it addressed. cairn runs it once per attempt as a `command`
agent (see examples/cairn.toml): the task JSON on stdin, the result JSON on stdout, exit 0. A
non-zero exit fails the attempt; the end of stderr is the error the plan records.
"""

import json
import sys


def main():
    task = json.load(sys.stdin)
    params = task.get("params") or {}
    topic = params.get("topic") or task.get("query") or "nothing"
    points = params.get("must_cover") or []
    if not isinstance(points, list) or not all(isinstance(p, str) for p in points):
        print("params.must_cover must be a list of strings", file=sys.stderr)
        return 2
    attempt = int(task.get("attempt") or 1)
    start = int(params.get("start", 2))
    n = min(len(points), max(0, start + attempt - 1))
    covered, missing = points[:n], points[n:]

    feedback = task.get("gate_feedback") or {}
    addressed = []
    for f in feedback.get("failed") or []:
        addressed.append("%s was %s, needs %s" % (f.get("criterion"), f.get("score"), f.get("bound")))
    if feedback.get("note"):
        addressed.append("reviewer %s: %s" % (feedback.get("reviewer") or "?", feedback["note"]))

    lines = ["Brief on %s (attempt %d)." % (topic, attempt)]
    lines += ["- %s: covered." % p for p in covered]
    if addressed:
        lines.append("Addressed: " + "; ".join(addressed) + ".")
    coverage = round(len(covered) / len(points), 4) if points else 1.0
    json.dump({"output": {"brief": "\n".join(lines), "covered": covered, "missing": missing},
               "scores": {"coverage": coverage, "cost_usd": round(0.02 * attempt, 4)}},
              sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
