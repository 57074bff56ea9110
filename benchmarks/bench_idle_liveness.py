"""Idle CPU of the liveness watchers: idle queue or group consumers (default two) in one process.

For each kind (``queue``: two ``Queue`` objects; ``group``: two members of one
stream group, joined and then not polled) and each probe period, a fresh child
process opens a broker in a temporary directory, creates a 2-partition topic
and the two consumers, lets them settle, then sleeps in its main thread for
``--seconds`` and reports ``process_time / wall time`` (every thread: the
watchers are the only ones awake).  Kinds and periods are interleaved over
``--runs`` rounds; the table shows the median and range per cell, and the
process's thread count (every thread, the main one included).

The period is patched in the child (``mqlite._liveness.PROBE_INTERVAL``, the
process's one queue watcher, and ``mqlite.groups.watcher._WATCH_INTERVAL``), so one
tree measures several periods.  Since D32 the queue watcher has no timed wake-up
while no other process has a queue consumer, so the ``queue`` rows are ~0 whatever
the period.  Run from the repository root::

    python benchmarks/bench_idle_liveness.py                  # ~2 min
    python benchmarks/bench_idle_liveness.py --periods 20,50 --runs 5 --seconds 5
    python benchmarks/bench_idle_liveness.py --kinds queue --consumers 100 --periods 50
    # the same with another tree's code (e.g. before D32): PYTHONPATH=<tree>/src python ...
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

CHILD = r"""
import sys, tempfile, threading, time
import mqlite
import mqlite.groups.watcher as gw
import mqlite._liveness as lv

kind, period, secs, n = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
gw._WATCH_INTERVAL = period
lv.PROBE_INTERVAL = period
with tempfile.TemporaryDirectory() as d:
    b = mqlite.open(d, durability="none")
    b.create_topic("t", partitions=2)
    if kind == "queue":
        cs = [b.queue("t", group="g") for _ in range(n)]
    else:
        cs = [b.consumer("t", group="g") for _ in range(n)]
        for _ in range(3):
            for c in cs:
                c.poll(timeout=0.01)
    time.sleep(0.5)
    c0, w0 = time.process_time(), time.monotonic()
    time.sleep(secs)
    print((time.process_time() - c0) / (time.monotonic() - w0), threading.active_count())
    for c in cs:
        c.close()
    b.close()
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--periods", default="20,50", help="probe periods in ms, comma-separated")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0, help="measured idle time per run")
    ap.add_argument("--consumers", type=int, default=2, help="idle consumers per process")
    ap.add_argument("--kinds", default="queue,group", help="comma-separated: queue, group")
    args = ap.parse_args()
    periods = [float(p) for p in args.periods.split(",")]
    kinds = args.kinds.split(",")
    got: dict[tuple[str, float], list[float]] = {}
    threads: dict[str, set[int]] = {}
    for _ in range(args.runs):
        for kind in kinds:
            for ms in periods:
                out = subprocess.run([sys.executable, "-c", CHILD, kind, str(ms / 1000),
                                      str(args.seconds), str(args.consumers)],
                                     check=True, capture_output=True, text=True).stdout
                cpu, nthreads = out.split()
                got.setdefault((kind, ms), []).append(100 * float(cpu))
                threads.setdefault(kind, set()).add(int(nthreads))
    print(f"{args.consumers} idle consumers in one process, % of one core, median (range) "
          f"of {args.runs}")
    print("kind   " + "".join(f"{f'{ms:g} ms':>22}" for ms in periods))
    for kind in kinds:
        cells = []
        for ms in periods:
            v = got[(kind, ms)]
            cells.append(f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})")
        print(f"{kind:<7}" + "".join(f"{c:>22}" for c in cells)
              + f"   threads: {'/'.join(map(str, sorted(threads[kind])))}")


if __name__ == "__main__":
    main()
