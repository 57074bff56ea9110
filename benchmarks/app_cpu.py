"""CPU per message of an empty one-message async App handler, two source trees alternating.

    python benchmarks/app_cpu.py --src /work/main/src --src src [--n 300000] [--reps 4]

Each run is a fresh process (``PYTHONPATH=<src>``): it fills a 1-partition topic with
``--n`` 100-byte messages (durability ``none``), starts an App with
``async def h(v: bytes): return None`` (stream, batch 1000) and times, from
``wait_ready()`` until every message is handled and committed, the wall clock and
the process's CPU time (all threads).  CPU per message is less disturbed by a loaded
machine than wall time; the runs alternate between the trees and medians are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

CHILD = r"""
import shutil, sys, tempfile, time
import mqlite
n = int(sys.argv[1])
d = tempfile.mkdtemp(prefix="mqlite-bench-appcpu-")
try:
    with mqlite.open(d, durability="none") as b:
        b.create_topic("t", 1)
        for _ in range(0, n, 1000):
            b.send_batch("t", [b"x" * 100] * 1000)
    app = mqlite.App(d, durability="none")

    @app.subscriber("t", group="g", batch=1000)
    async def h(v: bytes) -> None:
        return None

    app.start()
    app.wait_ready()
    t0, c0 = time.perf_counter(), time.process_time()
    while sum(r.handled for r in app._runners) < n:
        time.sleep(0.01)
    app.wait_idle(timeout=600)
    print(n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1e6)
    app.stop()
finally:
    shutil.rmtree(d, ignore_errors=True)
"""


def _run(src: str, n: int) -> tuple[float, float]:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(src))
    out = subprocess.run([sys.executable, "-c", CHILD, str(n)], env=env, check=True,
                         capture_output=True, text=True, timeout=600).stdout.split()
    return float(out[0]), float(out[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", action="append", required=True, help="a source tree (twice)")
    ap.add_argument("--n", type=int, default=300_000)
    ap.add_argument("--reps", type=int, default=4)
    args = ap.parse_args()
    res: dict[str, list[tuple[float, float]]] = {s: [] for s in args.src}
    for _ in range(args.reps):
        for s in args.src:
            res[s].append(_run(s, args.n))
    for s, v in res.items():
        print(f"{s:30} wall {statistics.median(x[0] for x in v):>10,.0f} msg/s   "
              f"cpu {statistics.median(x[1] for x in v):.2f} us/msg   "
              f"(cpu per run: {', '.join(f'{x[1]:.2f}' for x in v)})")


if __name__ == "__main__":
    main()
