"""The commit ring's cycle: N processes each sending one message at a time (D46).

Usage::

    python benchmarks/bench_ring_cycle.py 4 500 sync   # 4 processes x 500 sends, "sync"

Prints one line: messages/s over the timed part (all processes start together
at a barrier), messages per LMDB commit (from LMDB's last transaction id), the
commit cycle (wall time / commits: one durable commit plus everything between
the end of one and the start of the next), and the senders' user and system
CPU per message (``getrusage``, summed over the sender processes).

Compare two source trees in alternating fresh runs (the engine is pure Python
over the compiled core, so ``PYTHONPATH`` picks the tree; build each tree's
core first)::

    for i in $(seq 5); do
        PYTHONPATH=/tmp/base/src python benchmarks/bench_ring_cycle.py 4 500 sync
        PYTHONPATH=src python benchmarks/bench_ring_cycle.py 4 500 sync
    done
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time
from typing import Any

import mqlite


def _txnid(broker: Any) -> int:
    # LMDB's last transaction id: a count of every process's commits (a measurement
    # tool reaching into the engine; no public API exposes it)
    return int(broker._engine.env.handle().info()["last_txnid"])


def _sender(path: str, mode: str, n: int, barrier: Any, out: Any) -> None:
    try:
        b = mqlite.open(path, durability=mode)
        b.send("orders", b"warm-up")
        barrier.wait(60)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(n):
            b.send("orders", b"x" * 100)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        out.put((r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime))
        b.close()
    except BaseException:
        out.put(None)
        raise


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[2] not in ("sync", "lazy", "none"):
        print(__doc__, file=sys.stderr)
        return 2
    n_procs, n, mode = int(argv[0]), int(argv[1]), argv[2]
    ctx = multiprocessing.get_context("fork")
    tmp = tempfile.mkdtemp(prefix="mqbench-cycle-")
    try:
        path = os.path.join(tmp, "broker")
        broker = mqlite.open(path, durability=mode)
        broker.create_topic("orders", partitions=3)
        barrier = ctx.Barrier(n_procs + 1)
        out = ctx.Queue()
        procs = [ctx.Process(target=_sender, args=(path, mode, n, barrier, out))
                 for _ in range(n_procs)]
        for p in procs:
            p.start()
        barrier.wait(60)
        tx0 = _txnid(broker)
        t0 = time.perf_counter()
        cpu = [out.get(timeout=600) for _ in procs]
        wall = time.perf_counter() - t0
        commits = max(_txnid(broker) - tx0, 1)
        for p in procs:
            p.join()
        broker.close()
        if any(c is None for c in cpu):
            print("a sender failed", file=sys.stderr)
            return 1
        total = n_procs * n
        user = sum(c[0] for c in cpu) / total * 1e6
        system = sum(c[1] for c in cpu) / total * 1e6
        print(f"procs{n_procs}/{mode}: {total / wall:.0f} msg/s, {total / commits:.2f} msg/commit, "
              f"cycle {wall / commits * 1e6:.0f} us/commit, user {user:.0f} us/msg, "
              f"sys {system:.0f} us/msg")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
