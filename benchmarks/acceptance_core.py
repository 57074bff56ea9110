"""Issue 2 acceptance figures: send_batch, poll and single send throughput.

100-byte values, durability "none", median of 5 runs (each run on a fresh
broker directory):

    python benchmarks/acceptance_core.py [--runs 5] [--n 1000000]

Targets: send_batch of 1,000,000 values >= 3M msgs/s; reading them back with
poll >= 3M msgs/s; single send() >= 100k msgs/s.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

import mqlite


def one_run(n: int, singles: int) -> tuple[float, float, float]:
    d = tempfile.mkdtemp(prefix="mqlite-bench-")
    try:
        with mqlite.open(d, durability="none") as b:
            b.create_topic("t")
            values = [bytes(100)] * n
            t0 = time.perf_counter()
            b.send_batch("t", values)
            batch_rate = n / (time.perf_counter() - t0)

            c = b.consumer("t")
            got = 0
            t0 = time.perf_counter()
            while got < n:
                got += len(c.poll(max_records=100_000, timeout=0))
            poll_rate = n / (time.perf_counter() - t0)

            b.create_topic("s")
            v = bytes(100)
            send = b.send
            t0 = time.perf_counter()
            for _ in range(singles):
                send("s", v)
            single_rate = singles / (time.perf_counter() - t0)
        return batch_rate, poll_rate, single_rate
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--singles", type=int, default=100_000)
    args = ap.parse_args()
    rows = [one_run(args.n, args.singles) for _ in range(args.runs)]
    names = ["send_batch (1M x 100 B)", "poll (read back)", "single send()"]
    targets = [3e6, 3e6, 1e5]
    print(f"{'workload':28} {'median msgs/s':>14} {'min':>12} {'max':>12}  target")
    for i, name in enumerate(names):
        col = [r[i] for r in rows]
        med = statistics.median(col)
        ok = "ok" if med >= targets[i] else "BELOW"
        print(f"{name:28} {med:14,.0f} {min(col):12,.0f} {max(col):12,.0f}  "
              f">= {targets[i]:,.0f} {ok}")


if __name__ == "__main__":
    main()
