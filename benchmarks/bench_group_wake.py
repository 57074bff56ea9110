"""What a group's members spend per message when each reads one partition (D64).

Usage::

    python benchmarks/bench_group_wake.py [--members 8] [--partitions N] [--messages 4000]
                                          [--rate 1000]

Starts ``--members`` processes in one group on a topic of ``--partitions`` partitions
(default: as many as members; each
``poll(100)`` in a loop, no commits), then sends ``--messages`` 100-byte messages from this
process at ``--rate`` per second, round-robin over the partitions, and prints the
members' CPU time (user + system, all members) per message sent.  Before D64 every
append woke every member; since, a member that owns one partition is woken by that
partition's appends only, and one that owns a few (up to 16) by theirs.  Compare two trees with ``PYTHONPATH=<tree>/src``, alternating.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mqlite
from benchmarks._common import Fleet, paced


def _member(path: str, stop: Any, ready: Any, out: Any) -> None:
    with mqlite.open(path, durability="none") as b:
        c = b.consumer("t", group="g", commit="manual")
        for _ in range(20):  # join before the clock starts
            c.poll(100, timeout=0.01)
        ready.wait(120)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        got = 0
        while not stop.is_set():
            got += len(c.poll(100, timeout=0.05))
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        out.put((got, r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime))
        c.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--partitions", type=int, default=None)
    ap.add_argument("--messages", type=int, default=4000)
    ap.add_argument("--rate", type=float, default=1000.0, help="messages per second")
    args = ap.parse_args(argv)
    parts = args.members if args.partitions is None else args.partitions
    if (not 1 <= args.members <= 64 or not 1 <= parts <= 1024 or args.messages < 1
            or not 0 < args.rate <= 1e6):
        ap.error("--members 1..64, --partitions 1..1024, --messages >= 1, --rate in (0, 1e6]")
    d = tempfile.mkdtemp(prefix="group-wake-")
    try:
        with mqlite.open(d, durability="none") as b:
            b.create_topic("t", partitions=parts)
            fleet = Fleet(_member, [(d,)] * args.members)
            paced(args.messages, args.rate,
                  lambda i: b.send("t", b"x" * 100, partition=i % parts))
            res = fleet.finish()
        cpu = sum(r[1] for r in res)
        print(f"{args.members} members, {parts} partitions, {args.messages} messages at "
              f"{args.rate:.0f}/s: "
              f"members' CPU {cpu / args.messages * 1e6:.0f} µs per message "
              f"({sum(r[0] for r in res)} polled, re-reads after rebalances included)")
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
