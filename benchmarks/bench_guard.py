"""What entering a consumer's methods costs (D53): the UseGuard and the calls that pay it.

    python benchmarks/bench_guard.py [--n 200000 --rounds 5]

Rows, nanoseconds per call (best of ``--rounds``, ``timeit``):

* ``enter+exit``: one ``UseGuard.enter()`` / ``exit()`` pair (every public call of
  a ``Consumer`` or ``Queue`` pays one);
* ``woken``: ``UseGuard.woken()`` (the synchronous poll checks it after each wake-up);
* ``poll_step (empty)``: one read-only round of an event loop's poll on a topic with
  nothing new (``mqlite.aio`` runs one per wake-up), against ``_step`` (the same
  round without the guard and the argument checks);
* ``poll(1)``: a synchronous ``poll(max_records=1)`` returning one message of a
  filled topic.

Run it with ``PYTHONPATH`` at another built checkout to compare two trees; for
counts that repeat exactly, run it under ``valgrind --tool=callgrind`` with a
small ``--n`` in both trees.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import timeit

import mqlite


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    n = args.n
    d = tempfile.mkdtemp(prefix="mqlite-guard-")
    try:
        b = mqlite.open(d, durability="none")
        b.create_topic("empty")
        b.create_topic("full")
        for _ in range(n * args.rounds + 1000):
            b.send("full", b"x" * 100)
        c = b.consumer("empty")
        c.poll(timeout=0.01)
        life = c._life

        def pair() -> None:
            life.enter()
            life.exit()

        reader = b.consumer("full")
        reader.seek_to_beginning()
        rows = [
            ("enter+exit", pair),
            ("woken", life.woken),
            ("poll_step (empty)", lambda: c.poll_step(1000, writes=False)),
            ("_step (empty)", lambda: c._step(1000, False)),
            ("poll(1)", lambda: reader.poll(1, timeout=1.0)),
        ]
        print(f"ns per call, best of {args.rounds} x {n}")
        for name, fn in rows:
            best = min(timeit.repeat(fn, number=n, repeat=args.rounds)) / n * 1e9
            print(f"{name:20} {best:8.0f}")
        b.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
