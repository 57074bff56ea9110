"""Assignor run time for a large group (issue 10: sticky 100k partitions x 2k members <= 1 s).

Every member subscribes to every topic (``--topics`` topics of ``--partitions``
partitions each; default 100 x 1,000 = 100,000 partitions) and the group has
``--members`` members (default 2,000).  Rows:

* ``range`` / ``roundrobin`` / ``cooperative-sticky`` **fresh**: no previous
  assignment (a group's first generation);
* ``cooperative-sticky`` **join**: the previous assignment of the group, then
  one more member;
* ``cooperative-sticky`` **leave**: the previous assignment, then one member
  gone (its partitions must move; nothing else may);
* ``cooperative-sticky`` **double**: the previous assignment of half the
  members, then all of them (half of every old member's partitions move;
  reported, not part of the target: no single join or leave does this).

Each row is run ``--runs`` times (default 5); it prints the median wall time
and the median CPU time of the process (``time.process_time``), which is less
disturbed when other jobs share the cores.  The target is the median wall time
of the sticky fresh, join and leave rows at or below 1 s; the exit status is 1
when one is over.  ``--baseline PATH`` also times another assignors
module (for example the pre-change file, ``git show <rev>:src/mqlite/assignors.py
> /tmp/old.py``) on the same rows; ``--skip-slow-baseline`` leaves out its
sticky rows, which took minutes before issue 10.

Run from the repository root::

    python benchmarks/bench_assignors.py
    python benchmarks/bench_assignors.py --baseline /tmp/old.py --skip-slow-baseline
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

TARGET_S = 1.0
TARGET_ROWS = ("cooperative-sticky fresh", "cooperative-sticky join", "cooperative-sticky leave")


def _load(path: str | None) -> ModuleType:
    if path is None:
        import mqlite.assignors as mod
        return mod
    spec = importlib.util.spec_from_file_location("assignors_baseline", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rows(mod: ModuleType, topics: int, partitions: int, members: int,
          slow: bool) -> list[tuple[str, Callable[[], Any]]]:
    parts = {f"topic-{i:04d}": partitions for i in range(topics)}
    subs = sorted(parts)
    group = {f"m-{j:06d}": subs for j in range(members)}
    rows: list[tuple[str, Callable[[], Any]]] = [
        ("range fresh", lambda: mod.assign("range", group, parts)),
        ("roundrobin fresh", lambda: mod.assign("roundrobin", group, parts)),
    ]
    if not slow:
        return rows
    prev = mod.assign("cooperative-sticky", group, parts)
    joined = {**group, "m-999999": subs}
    left = {m: t for m, t in group.items() if m != "m-000007"}
    half = {m: t for i, (m, t) in enumerate(sorted(group.items())) if i % 2 == 0}
    prev_half = mod.assign("cooperative-sticky", half, parts)
    rows += [
        ("cooperative-sticky fresh", lambda: mod.assign("cooperative-sticky", group, parts)),
        ("cooperative-sticky join", lambda: mod.assign("cooperative-sticky", joined, parts, prev)),
        ("cooperative-sticky leave", lambda: mod.assign("cooperative-sticky", left, parts, prev)),
        ("cooperative-sticky double",
         lambda: mod.assign("cooperative-sticky", group, parts, prev_half)),
    ]
    return rows


def _time(fn: Callable[[], Any], runs: int) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(runs):
        w, c = time.perf_counter(), time.process_time()
        fn()
        cpus.append(time.process_time() - c)
        walls.append(time.perf_counter() - w)
    return statistics.median(walls), statistics.median(cpus)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topics", type=int, default=100)
    ap.add_argument("--partitions", type=int, default=1000, help="partitions per topic")
    ap.add_argument("--members", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--baseline", help="path of another assignors.py to time on the same rows")
    ap.add_argument("--skip-slow-baseline", action="store_true",
                    help="time only range and roundrobin of the baseline")
    ap.add_argument("--json", help="write the results to this file")
    args = ap.parse_args(argv)
    total = args.topics * args.partitions
    print(f"{total:,} partitions ({args.topics} topics x {args.partitions}) x "
          f"{args.members:,} members, median of {args.runs} runs; "
          f"target: cooperative-sticky fresh / join / leave <= {TARGET_S} s")
    sides = [("mqlite", _load(None), True)]
    if args.baseline:
        sides.append(("baseline", _load(args.baseline), not args.skip_slow_baseline))
    results: dict[str, dict[str, dict[str, float]]] = {}
    ok = True
    for side, mod, slow in sides:
        results[side] = {}
        for name, fn in _rows(mod, args.topics, args.partitions, args.members, slow):
            wall, cpu = _time(fn, args.runs)
            results[side][name] = {"wall_s": wall, "cpu_s": cpu}
            mark = ""
            if side == "mqlite" and name in TARGET_ROWS:
                passed = wall <= TARGET_S
                ok = ok and passed
                mark = "  ok" if passed else f"  OVER {TARGET_S} s"
            print(f"{side:9s} {name:28s} wall {wall:7.3f} s   cpu {cpu:7.3f} s{mark}",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"topics": args.topics, "partitions": args.partitions,
                       "members": args.members, "runs": args.runs, "results": results}, f,
                      indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
