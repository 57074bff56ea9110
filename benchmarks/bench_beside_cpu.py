"""Where the time goes when one producer sends beside committing group consumers (issue 14).

Usage::

    python benchmarks/bench_beside_cpu.py [--sends 3000] [--consumers 4] [--no-commit]
                                          [--pin] [--split]

The shape of ``python -m benchmarks``' ``beside4`` row: one ``"sync"`` producer in this
process sends ``--sends`` 100-byte messages, one ``send()`` per call, to a 3-partition
topic, beside ``--consumers`` consumer processes (the first three in group "pay", the
fourth in group "ana"), each ``poll(100)`` then ``commit()`` (``--no-commit``: poll only).
``--consumers 0``: the producer alone.  Prints the producer's rate, the percentiles of
one ``send()``, its involuntary context switches per send (the kernel preempting it), its
user and system CPU and LMDB commits per message, and each consumer's polls, messages and
user / system CPU per message it received.

``--pin`` runs the producer on CPU 1 and every consumer on CPU 0 (a measurement only:
the library never sets affinities), which separates the cost of sharing a CPU from the
cost of the consumers' commits (D71); ``--split`` times the steps of each ring commit the
producer leads (``Engine._lead``: applying the slots, the LMDB commit, the wake-ups), in
µs per send.  D62, D64, D65, D68 and D71 quote it; compare two trees with
``PYTHONPATH=<tree>/src``, alternating.
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


def _consumer(path: str, group: str, commit: bool, pin: bool, stop: Any, ready: Any,
              out: Any) -> None:
    if pin:
        os.sched_setaffinity(0, {0})
    with mqlite.open(path, durability="sync") as b:
        c = b.consumer("t", group=group, commit="manual")
        c.poll(100, timeout=0.01)  # joined before the clock starts
        ready.wait(120)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        polls = got = 0
        while not stop.is_set():
            msgs = c.poll(100, timeout=0.05)
            polls += 1
            if msgs:
                got += len(msgs)
                if commit:
                    c.commit()
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        out.put((group, polls, got, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime))
        c.close()


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
    ap.add_argument("--sends", type=int, default=3000)
    ap.add_argument("--consumers", type=int, default=4)
    ap.add_argument("--no-commit", action="store_true")
    ap.add_argument("--pin", action="store_true", help="producer on CPU 1, consumers on CPU 0")
    ap.add_argument("--split", action="store_true", help="time the steps of each led commit")
    args = ap.parse_args(argv)
    if args.sends < 1 or not 0 <= args.consumers <= 16:
        ap.error("--sends >= 1, --consumers 0..16")
    if args.pin and not {0, 1} <= os.sched_getaffinity(0):
        ap.error("--pin needs CPUs 0 and 1")
    d = tempfile.mkdtemp(prefix="beside-cpu-")
    try:
        with mqlite.open(d, durability="sync") as b:
            b.create_topic("t", partitions=3)
            b.send("t", b"x")
            groups = (["pay"] * 3 + ["ana"] * 13)[:args.consumers]
            fleet = Fleet(_consumer, [(d, g, not args.no_commit, args.pin) for g in groups])
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
            tx0 = b._engine.env.lmdb.info()["last_txnid"]
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = clock()
            for _ in range(args.sends):
                t = clock()
                b.send("t", payload)
                lat.append(clock() - t)
            dt = clock() - t0
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            commits = b._engine.env.lmdb.info()["last_txnid"] - tx0
            res = fleet.finish()
        n = args.sends
        lat.sort()

        def pct(p: float) -> float:
            return lat[int(p * (n - 1))] * 1e6

        print(f"producer {n / dt:,.0f} msg/s, user {(r1.ru_utime - r0.ru_utime) / n * 1e6:.0f} "
              f"sys {(r1.ru_stime - r0.ru_stime) / n * 1e6:.0f} µs per message, "
              f"{commits / n:.2f} commits per message")
        print(f"  send p10 {pct(0.1):.0f} p50 {pct(0.5):.0f} p90 {pct(0.9):.0f} "
              f"p99 {pct(0.99):.0f} µs, {(r1.ru_nivcsw - r0.ru_nivcsw) / n:.2f} preemptions "
              f"per send")
        for name, (total, calls) in sorted(totals.items()):
            print(f"  {name}: {calls} calls, {total / max(calls, 1) / 1000:.1f} µs per call, "
                  f"{total / n / 1000:.1f} µs per send")
        for group, polls, got, cu, cs in sorted(res):
            per = max(got, 1)
            print(f"  {group}: {polls} polls, {got} messages, user {cu / per * 1e6:.0f} "
                  f"sys {cs / per * 1e6:.0f} µs per message received")
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
