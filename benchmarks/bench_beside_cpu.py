"""Where the CPU goes when one producer sends beside committing group consumers (issue 14).

Usage::

    python benchmarks/bench_beside_cpu.py [--sends 3000] [--consumers 4] [--no-commit]

The shape of ``python -m benchmarks``' ``beside4`` row: one ``"sync"`` producer in this
process sends ``--sends`` 100-byte messages, one ``send()`` per call, to a 3-partition
topic, beside ``--consumers`` consumer processes (the first three in group "pay", the
fourth in group "ana"), each ``poll(100)`` then ``commit()`` (``--no-commit``: poll only).
``--consumers 0``: the producer alone.  Prints the producer's rate, its user and system
CPU per message and LMDB commits per message, and each consumer's polls, messages and
user / system CPU per message it received.  D62, D64 and D65 quote it; compare two trees
with ``PYTHONPATH=<tree>/src``, alternating.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mqlite
from benchmarks._common import Fleet


def _consumer(path: str, group: str, commit: bool, stop: Any, ready: Any, out: Any) -> None:
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sends", type=int, default=3000)
    ap.add_argument("--consumers", type=int, default=4)
    ap.add_argument("--no-commit", action="store_true")
    args = ap.parse_args(argv)
    if args.sends < 1 or not 0 <= args.consumers <= 16:
        ap.error("--sends >= 1, --consumers 0..16")
    d = tempfile.mkdtemp(prefix="beside-cpu-")
    try:
        with mqlite.open(d, durability="sync") as b:
            b.create_topic("t", partitions=3)
            b.send("t", b"x")
            groups = (["pay"] * 3 + ["ana"] * 13)[:args.consumers]
            fleet = Fleet(_consumer, [(d, g, not args.no_commit) for g in groups])
            tx0 = b._engine.env.lmdb.info()["last_txnid"]
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            for _ in range(args.sends):
                b.send("t", b"x" * 100)
            dt = time.perf_counter() - t0
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            commits = b._engine.env.lmdb.info()["last_txnid"] - tx0
            res = fleet.finish()
        n = args.sends
        print(f"producer {n / dt:,.0f} msg/s, user {(r1.ru_utime - r0.ru_utime) / n * 1e6:.0f} "
              f"sys {(r1.ru_stime - r0.ru_stime) / n * 1e6:.0f} µs per message, "
              f"{commits / n:.2f} commits per message")
        for group, polls, got, cu, cs in sorted(res):
            per = max(got, 1)
            print(f"  {group}: {polls} polls, {got} messages, user {cu / per * 1e6:.0f} "
                  f"sys {cs / per * 1e6:.0f} µs per message received")
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
