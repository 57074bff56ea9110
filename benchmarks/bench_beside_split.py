"""Where a ``"sync"`` producer's time goes beside committing group consumers (issue 14, D71).

Usage::

    python benchmarks/bench_beside_split.py [--sends 4000] [--consumers 4] [--no-commit]
                                            [--pin] [--split]

The shape of ``bench_beside_cpu.py`` (one producer in this process sending 100-byte
messages, one ``send()`` per call, to a 3-partition topic, beside ``--consumers``
processes: three in group "pay", the fourth in "ana", each ``poll(100)`` then
``commit()``), but timing the producer: its rate, the percentiles of one ``send()`` and
its involuntary context switches per send (the kernel preempting it).  ``--pin`` runs
the producer on CPU 1 and every consumer on CPU 0, which separates the cost of sharing a
CPU from the cost of the consumers' commits; ``--split`` times the steps of each ring
commit the producer leads (``Engine._lead``: applying the slots, the LMDB commit, the
wake-ups), in µs per send.  ``--consumers 0``: the producer alone.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mqlite
from benchmarks._common import Fleet
from benchmarks.bench_beside_cpu import _consumer


def _pinned_consumer(*args: Any) -> None:
    os.sched_setaffinity(0, {0})
    _consumer(*args)


def _timed(obj: Any, name: str, totals: dict[str, list[int]]) -> None:
    """Replace ``obj.name`` by a wrapper adding its wall time and calls to ``totals``."""
    fn: Callable[..., Any] = getattr(obj, name)
    acc = totals.setdefault(name, [0, 0])

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            acc[0] += time.perf_counter_ns() - t0
            acc[1] += 1

    setattr(obj, name, wrapper)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sends", type=int, default=4000)
    ap.add_argument("--consumers", type=int, default=4)
    ap.add_argument("--no-commit", action="store_true")
    ap.add_argument("--pin", action="store_true", help="producer on CPU 1, consumers on CPU 0")
    ap.add_argument("--split", action="store_true", help="time the steps of each led commit")
    args = ap.parse_args(argv)
    if args.sends < 100 or not 0 <= args.consumers <= 16:
        ap.error("--sends >= 100, --consumers 0..16")
    if args.pin and len(os.sched_getaffinity(0)) < 2:
        ap.error("--pin needs two CPUs")
    d = tempfile.mkdtemp(prefix="beside-split-")
    try:
        with mqlite.open(d, durability="sync") as b:
            b.create_topic("t", partitions=3)
            b.send("t", b"x")
            groups = (["pay"] * 3 + ["ana"] * 13)[:args.consumers]
            target = _pinned_consumer if args.pin else _consumer
            fleet = Fleet(target, [(d, g, not args.no_commit) for g in groups])
            if args.pin:
                os.sched_setaffinity(0, {1})
            totals: dict[str, list[int]] = {}
            if args.split:
                engine = b._engine
                for name in ("_lead", "_take_ring", "_ring_commit", "_ring_done"):
                    _timed(engine, name, totals)
                for name in ("notify_partitions", "notify_topics"):
                    _timed(engine.env, name, totals)
            lat: list[float] = []
            clock = time.perf_counter
            payload = b"x" * 100
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = clock()
            for _ in range(args.sends):
                t = clock()
                b.send("t", payload)
                lat.append(clock() - t)
            dt = clock() - t0
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            fleet.finish()
        n = args.sends
        lat.sort()

        def pct(p: float) -> float:
            return lat[int(p * (n - 1))] * 1e6

        print(f"consumers {args.consumers} commit {not args.no_commit} pin {args.pin}: "
              f"{n / dt:,.0f} sends/s; send p10 {pct(0.1):.0f} p50 {pct(0.5):.0f} "
              f"p90 {pct(0.9):.0f} p99 {pct(0.99):.0f} µs; "
              f"{(r1.ru_nivcsw - r0.ru_nivcsw) / n:.2f} preemptions per send")
        for name, (total, calls) in sorted(totals.items()):
            print(f"  {name}: {calls} calls, {total / max(calls, 1) / 1000:.1f} µs per call, "
                  f"{total / n / 1000:.1f} µs per send")
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
