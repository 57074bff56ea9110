"""Issue 2 acceptance figures: send_batch, poll and single send throughput.

100-byte values, durability "none", median of 5 runs (each run on a fresh
broker directory):

    python benchmarks/acceptance_core.py [--runs 5] [--n 1000000]

Targets: send_batch of 1,000,000 values >= 3M msgs/s; reading them back with
poll >= 3M msgs/s; single send() >= 100k msgs/s.  Single sends are measured
twice: on the new broker, and to a new topic right after the 1M-message bulk
batch in the same file, where every LMDB commit costs about twice as much
(raw py-lmdb shows the same: ~108k vs ~192k small commits/s; docs/decisions.md D14).
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import tempfile
import time

import mqlite


def _singles(b: mqlite.Broker, topic: str, count: int) -> float:
    b.create_topic(topic)
    v = bytes(100)
    send = b.send
    t0 = time.perf_counter()
    for _ in range(count):
        send(topic, v)
    return count / (time.perf_counter() - t0)


def one_run(n: int, singles: int) -> tuple[float, float, float, float]:
    d = tempfile.mkdtemp(prefix="mqlite-bench-")
    try:
        with mqlite.open(d, durability="none") as b:
            fresh_rate = _singles(b, "fresh", singles)
            b.create_topic("t")
            values = [bytes(100)] * n
            t0 = time.perf_counter()
            b.send_batch("t", values)
            batch_rate = n / (time.perf_counter() - t0)

            del values
            c = b.consumer("t")
            got = 0
            t0 = time.perf_counter()
            while got < n:
                got += len(c.poll(max_records=100_000, timeout=0))
            poll_rate = n / (time.perf_counter() - t0)
            del c
            gc.collect()  # each workload is measured on its own, not amid the previous one's garbage

            after_bulk_rate = _singles(b, "s", singles)
        return batch_rate, poll_rate, fresh_rate, after_bulk_rate
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--singles", type=int, default=100_000)
    args = ap.parse_args()
    rows = [one_run(args.n, args.singles) for _ in range(args.runs)]
    names = ["send_batch (1M x 100 B)", "poll (read back)", "single send()",
             "single send() after bulk"]
    targets = [3e6, 3e6, 1e5, 1e5]
    print(f"{'workload':28} {'median msgs/s':>14} {'min':>12} {'max':>12}  target")
    for i, name in enumerate(names):
        col = [r[i] for r in rows]
        med = statistics.median(col)
        ok = "ok" if med >= targets[i] else "BELOW"
        print(f"{name:28} {med:14,.0f} {min(col):12,.0f} {max(col):12,.0f}  "
              f">= {targets[i]:,.0f} {ok}")


if __name__ == "__main__":
    main()
