"""CPU per message in the commit ring's senders, A/B over source trees (D56).

Usage::

    python benchmarks/bench_ring_cpu.py 16 500 sync                 # this tree, once
    python benchmarks/bench_ring_cpu.py 16 500 sync --src /tmp/base/src --src src --rounds 5

N processes each send ``n`` messages of 100 bytes one at a time (``broker.send``)
to a one-partition topic after a common barrier.  Per run it prints messages/s
over the timed part, the senders' user and system CPU per message
(``getrusage`` around the timed loop, summed over the processes), voluntary and
involuntary context switches per message, and messages per LMDB commit (from
LMDB's last transaction id).

With ``--src`` (repeatable) each round runs every tree once, in the order given,
each in a fresh interpreter with ``PYTHONPATH`` set to that directory (build
each tree's compiled core first); after the rounds it prints the medians per tree
and the median of the per-round ratios of every tree to the first.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

_FIELDS = ("msg_s", "user_us", "sys_us", "cpu_us", "vcsw", "ivcsw", "per_commit")


def _sender(path: str, mode: str, n: int, barrier: Any, out: Any) -> None:
    import mqlite

    try:
        b = mqlite.open(path, durability=mode)
        b.send("t", b"x" * 100)
        value = b"x" * 100
        barrier.wait(60)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        for _ in range(n):
            b.send("t", value)
        t1 = time.perf_counter()
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        out.put((t1 - t0, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime,
                 r1.ru_nvcsw - r0.ru_nvcsw, r1.ru_nivcsw - r0.ru_nivcsw))
        b.close()
    except BaseException:
        out.put(None)
        raise


def run_once(procs: int, n: int, mode: str) -> dict[str, float]:
    """One measurement in this interpreter (the tree on ``sys.path``)."""
    import mqlite

    base = "/work/tmp" if os.path.isdir("/work/tmp") else None
    d = tempfile.mkdtemp(prefix="ringcpu-", dir=base)
    try:
        b = mqlite.open(d, durability=mode)
        b.create_topic("t", partitions=1)
        ctx = multiprocessing.get_context("fork")
        bar = ctx.Barrier(procs + 1)
        q = ctx.Queue()
        ps = [ctx.Process(target=_sender, args=(d, mode, n, bar, q)) for _ in range(procs)]
        for p in ps:
            p.start()
        txn0 = int(b._engine.env.handle().info()["last_txnid"])
        bar.wait(60)
        t0 = time.perf_counter()
        res = [q.get(timeout=600) for _ in ps]
        wall = time.perf_counter() - t0
        for p in ps:
            p.join(60)
        if any(r is None for r in res):
            raise SystemExit("a sender failed")
        # LMDB's last transaction id: every process's commits (a measuring tool
        # reaching into the engine; no public API exposes it)
        txn = int(b._engine.env.handle().info()["last_txnid"]) - txn0 - procs
        b.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    tot = procs * n
    return {
        "msg_s": tot / wall,
        "user_us": sum(r[1] for r in res) / tot * 1e6,
        "sys_us": sum(r[2] for r in res) / tot * 1e6,
        "cpu_us": sum(r[1] + r[2] for r in res) / tot * 1e6,
        "vcsw": sum(r[3] for r in res) / tot,
        "ivcsw": sum(r[4] for r in res) / tot,
        "per_commit": tot / max(txn, 1),
    }


def single(rounds: int, mode: str) -> None:
    """One process, ``rounds`` sends that each go through a ring slot and lead it.

    Before each send one more slot is handed over (as a waiting sender's), so the
    ring is busy and the send takes the ring's way: fill, lead (apply, commit,
    DONE), result.  For instruction counts of one sender's path, e.g.::

        valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
            python benchmarks/bench_ring_cpu.py 1 0 lazy --single 600

    (minus the same with ``--single 100``, divided by 500).
    """
    import mqlite
    from mqlite import _core

    d = tempfile.mkdtemp(prefix="ringcpu-")
    try:
        b = mqlite.open(d, durability=mode, map_size=1 << 30)  # valgrind: a small map
        b.create_topic("t", partitions=1)
        b.send("t", b"warm")
        eng = b._engine
        comb = eng.env.combiner
        maxb = eng.topic_fresh("t").config["max_message_bytes"]
        batch = _core.encode_batches((b"h" * 100,), None, None, 1, max_message_bytes=maxb)[0]
        handed = eng.ring_payload("t", 0, 1, maxb, [batch], None)
        value = b"x" * 100
        pid = os.getpid()
        for _ in range(rounds):
            i = comb.claim(pid)
            t = comb.fill(i, handed)
            b.send("t", value)
            if not comb.release(i, t):
                raise SystemExit("the handed slot was not committed")
        b.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _line(tag: str, r: dict[str, float]) -> str:
    return (f"{tag}: {r['msg_s']:.0f} msg/s, user {r['user_us']:.1f} sys {r['sys_us']:.1f} "
            f"user+sys {r['cpu_us']:.1f} us/msg, vcsw {r['vcsw']:.2f} ivcsw {r['ivcsw']:.2f} /msg, "
            f"{r['per_commit']:.2f} msg/commit")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("procs", type=int)
    ap.add_argument("n", type=int, help="sends per process")
    ap.add_argument("mode", choices=("sync", "lazy", "none"))
    ap.add_argument("--src", action="append", default=[],
                    help="a source directory to put on PYTHONPATH (repeat for A/B)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--single", type=int, metavar="ROUNDS",
                    help="one process leading ROUNDS ring sends (for callgrind)")
    a = ap.parse_args(argv)
    if a.single is not None:
        single(a.single, a.mode)
        return 0
    if not a.src:
        r = run_once(a.procs, a.n, a.mode)
        print(json.dumps(r) if a.json else _line(f"{a.mode} P={a.procs}", r), flush=True)
        return 0
    got: dict[str, list[dict[str, float]]] = {s: [] for s in a.src}
    for rnd in range(a.rounds):
        for s in a.src:
            env = dict(os.environ, PYTHONPATH=os.path.abspath(s))
            out = subprocess.run(
                [sys.executable, os.path.abspath(__file__), str(a.procs), str(a.n), a.mode,
                 "--json"], env=env, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            got[s].append(r)
            print(_line(f"round {rnd + 1} {s}", r), flush=True)
    first = a.src[0]
    print(f"medians of {a.rounds} ({a.mode}, {a.procs} x {a.n}); ratio = median of the "
          f"per-round ratios to {first}")
    for s in a.src:
        med = {f: statistics.median(r[f] for r in got[s]) for f in _FIELDS}
        line = _line(s, med)
        if s != first:
            rat = {f: statistics.median(x[f] / y[f] for x, y in zip(got[s], got[first]))
                   for f in ("msg_s", "user_us", "sys_us", "cpu_us")}
            line += (f"  | ratio msg/s {rat['msg_s']:.2f}x, user {rat['user_us']:.2f}x, "
                     f"sys {rat['sys_us']:.2f}x, user+sys {rat['cpu_us']:.2f}x")
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
