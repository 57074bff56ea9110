"""Fixed-work runs for timing the commit ring from outside (farm-bench, docs/decisions.md D27).

Usage::

    python benchmarks/bench_commit_ring.py beside 300    # 300 sends beside 3+1 committing consumers
    python benchmarks/bench_commit_ring.py procs 16 100  # 16 processes x 100 sends each
    python benchmarks/bench_commit_ring.py procs 4 300 lazy  # the same under "lazy"

Both run under ``"sync"`` (or the durability given last) and exit when the work is done, so the wall time of
the whole process is the measure; compare the ring on and off with::

    farm-bench -n 5 --vs "env MQLITE_COMBINE=0 python benchmarks/bench_commit_ring.py beside 300" \\
        -- python benchmarks/bench_commit_ring.py beside 300
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
import time
from typing import Any

import mqlite

DURABILITY = "sync"
REPORT = os.environ.get("BENCH_REPORT") == "1"  # print the send rate and commits per send


def _txnid(broker: Any) -> int:
    # LMDB's last transaction id: a count of every process's commits (a measurement
    # tool reaching into the engine; no public API exposes it)
    return int(broker._engine.env.handle().info()["last_txnid"])


def _consumer(path: str, group: str, stop: Any, barrier: Any) -> None:
    b = mqlite.open(path, durability=DURABILITY)
    c = b.consumer("orders", group=group, commit="manual")
    c.poll(1, timeout=0.2)
    barrier.wait(60)
    while not stop.is_set():
        if c.poll(100, timeout=0.05):
            c.commit()
    c.close()
    b.close()


def _sender(path: str, n: int, barrier: Any) -> None:
    b = mqlite.open(path, durability=DURABILITY)
    b.send("orders", b"warm-up")
    barrier.wait(60)
    for _ in range(n):
        b.send("orders", b"x" * 100)
    b.close()


def main(argv: list[str]) -> int:
    global DURABILITY
    if argv and argv[-1] in ("sync", "lazy", "none"):
        DURABILITY = argv.pop()
    ctx = multiprocessing.get_context("fork")
    path = os.path.join(tempfile.mkdtemp(prefix="mqbench-ring-"), "broker")
    broker = mqlite.open(path, durability=DURABILITY)
    broker.create_topic("orders", partitions=3)
    if argv[:1] == ["beside"] and len(argv) == 2:
        stop = ctx.Event()
        barrier = ctx.Barrier(5)
        procs = [ctx.Process(target=_consumer, args=(path, g, stop, barrier))
                 for g in ("payments", "payments", "payments", "analytics")]
        for p in procs:
            p.start()
        barrier.wait(60)
        n = int(argv[1])
        t0 = time.perf_counter()
        tx0 = _txnid(broker) if REPORT else 0
        for i in range(n):
            broker.send("orders", b"x" * 100, key=str(i).encode())
        dt = time.perf_counter() - t0
        if REPORT:
            tx = _txnid(broker) - tx0
            print(f"{n / dt:.0f} sends/s beside 3+1 consumers; {tx / n:.2f} commits per send")
        stop.set()
    elif argv[:1] == ["procs"] and len(argv) == 3:
        n_procs = int(argv[1])
        barrier = ctx.Barrier(n_procs)
        procs = [ctx.Process(target=_sender, args=(path, int(argv[2]), barrier))
                 for _ in range(n_procs)]
        for p in procs:
            p.start()
    else:
        print(__doc__, file=sys.stderr)
        return 2
    for p in procs:
        p.join()
    broker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
