#!/usr/bin/env python3
"""Writes link/hot-symbols.txt: the functions cairn executes, grouped by run, hottest first.

Runs a release binary's benchmark workloads and `cairn run` under valgrind's callgrind (which
counts instructions, so the list does not depend on how busy the machine is) and writes the
functions the binary defines, one per line, for the linker's --symbol-ordering-file (see
build.rs). Each function goes into the group of the first run that executes it, the runs
taken in the order below (`plans` first: the engine's core path); within a group, the function
with the most instructions of its own comes first. So each run's code lies together, the first
run's most tightly.

    cargo build --release -p cairn-cli
    python3 crates/cairn-cli/link/hot-symbols.py target/release/cairn

Needs valgrind and binutils' nm. With CAIRN_TEST_DATABASE_URL set, the PostgreSQL store's
paths are profiled as well.

    python3 crates/cairn-cli/link/hot-symbols.py --check target/release/cairn

tells how many of the listed functions a build still defines (exit 1 when some are missing).
"""

import collections
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))


def runs(exe, work):
    """Each profiled run: (name, argv). Sizes are small: callgrind runs 50 times slower."""
    bench = [exe, "bench", "--child"]
    out = [
        ("plans", bench + ["--workload", "plans", "--plans", "300"]),
        ("one_plan", bench + ["--workload", "one_plan", "--long-steps", "300"]),
        ("control", bench + ["--workload", "control", "--plans", "100", "--requests", "100"]),
        ("restore", bench + ["--workload", "restore", "--long-steps", "200", "--history-runs", "2"]),
        ("http", bench + ["--workload", "http", "--plans", "100", "--requests", "100"]),
        ("run", [exe, "run", os.path.join(ROOT, "examples", "research.yaml")]),
    ]
    for i, (name, argv) in enumerate(out):
        argv += ["--db", os.path.join(work, f"{i}.db")]
    url = os.environ.get("CAIRN_TEST_DATABASE_URL")
    if url:
        # Not a child: the parent makes a database of its own on the server for the run (and
        # runs the workload on SQLite first, whose functions the groups above hold already).
        out.append(("plans_pg", [exe, "bench", "--workload", "plans", "--plans", "100",
                                 "--database-url", url, "--db", work]))
    return out


def self_costs(path):
    """A callgrind profile's instructions per function, its own only (not its callees')."""
    names = {}
    cost = collections.Counter()
    current = None
    skip_next = False
    fn = re.compile(r"^(c?fn)=\((\d+)\)(?: (.*))?$")
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            m = fn.match(line)
            if m:
                kind, ident, name = m.groups()
                if name:
                    names[ident] = name
                if kind == "fn":
                    current = names.get(ident)
                continue
            if line.startswith("calls="):
                skip_next = True  # the next cost line is the call's, counted in the callee
                continue
            if line[:1].isdigit() or line[:1] in "+-*":
                if skip_next:
                    skip_next = False
                    continue
                parts = line.split()
                if len(parts) >= 2 and current:
                    cost[current] += int(parts[1])
    return cost


def defined(exe):
    out = subprocess.run(["nm", "--defined-only", exe], capture_output=True, text=True, check=True)
    return {p[2] for p in (l.split() for l in out.stdout.splitlines()) if len(p) == 3 and p[1] in "tTwW"}


def check(exe):
    """How much of the list a built binary still defines."""
    have = defined(exe)
    with open(os.path.join(HERE, "hot-symbols.txt")) as f:
        listed = [l.strip() for l in f if l.strip()]
    missing = [sym for sym in listed if sym not in have]
    print(f"{len(listed) - len(missing)} of {len(listed)} listed functions are in {exe}")
    if missing:
        print(f"{len(missing)} missing ({sum('.llvm.' in sym for sym in missing)} of them with a"
              " .llvm. suffix, which changes with their crate's code): make the list again")
        sys.exit(1)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        return check(os.path.abspath(sys.argv[2]))
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    exe = os.path.abspath(sys.argv[1])
    groups = []
    with tempfile.TemporaryDirectory() as work:
        for name, argv in runs(exe, work):
            prefix = os.path.join(work, name)
            cmd = ["valgrind", "--tool=callgrind", "--demangle=no", "--trace-children=yes",
                   f"--callgrind-out-file={prefix}.%p"] + argv
            print("profiling", name, file=sys.stderr)
            subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            cost = collections.Counter()
            for f in os.listdir(work):
                if f.startswith(name + "."):  # the run's processes: a server child has its own
                    cost.update(self_costs(os.path.join(work, f)))
                    os.remove(os.path.join(work, f))
            groups.append(cost)
    have = defined(exe)
    hot, seen = [], set()
    for cost in groups:
        for sym, _ in sorted(cost.items(), key=lambda kv: (-kv[1], kv[0])):
            if sym in have and sym not in seen:
                seen.add(sym)
                hot.append(sym)
    dest = os.path.join(HERE, "hot-symbols.txt")
    with open(dest, "w") as f:
        f.write("\n".join(hot) + "\n")
    print(f"{len(hot)} functions written to {dest}", file=sys.stderr)


if __name__ == "__main__":
    main()
