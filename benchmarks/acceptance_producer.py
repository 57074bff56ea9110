"""Issue 3 acceptance: group commit under durability "sync".

Row 1: one thread calling ``broker.send()`` (one fsync'd transaction each).
Row 2: 32 threads each calling ``producer.send(...).result()`` on one shared
``broker.producer(linger_ms=...)``: concurrent sends share transactions.

    python benchmarks/acceptance_producer.py [--seconds 3] [--runs 5] [--linger-ms 0]

Target: row 2 >= 15x row 1 (medians of interleaved runs).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time

import mqlite


def single(path: str, seconds: float) -> float:
    with mqlite.open(path, durability="sync") as b:
        b.create_topic("s", exist_ok=True)
        v = bytes(100)
        n = 0
        end = time.perf_counter() + seconds
        t0 = time.perf_counter()
        while time.perf_counter() < end:
            b.send("s", v)
            n += 1
        return n / (time.perf_counter() - t0)


def threaded(path: str, seconds: float, threads: int, linger_ms: float) -> float:
    with mqlite.open(path, durability="sync") as b:
        b.create_topic("m", exist_ok=True)
        counts = [0] * threads
        stop = threading.Event()
        with b.producer(linger_ms=linger_ms) as prod:

            def work(i: int) -> None:
                v = bytes(100)
                while not stop.is_set():
                    prod.send("m", v).result()
                    counts[i] += 1

            ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
            t0 = time.perf_counter()
            for t in ts:
                t.start()
            time.sleep(seconds)
            stop.set()
            for t in ts:
                t.join()
            dt = time.perf_counter() - t0
        return sum(counts) / dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--linger-ms", type=float, default=0.0)
    args = ap.parse_args()
    one, many = [], []
    for _ in range(args.runs):  # interleaved A B A B
        d = tempfile.mkdtemp(prefix="mqlite-prod-")
        try:
            one.append(single(d, args.seconds))
            many.append(threaded(d, args.seconds, args.threads, args.linger_ms))
        finally:
            shutil.rmtree(d, ignore_errors=True)
    m1, m2 = statistics.median(one), statistics.median(many)
    print(f"durability sync, 100 B values, {args.runs} interleaved runs of {args.seconds}s")
    print(f"1 thread, broker.send():                {m1:10,.0f} msgs/s  (min {min(one):,.0f} max {max(one):,.0f})")
    print(f"{args.threads} threads, producer.send().result(): {m2:10,.0f} msgs/s  (min {min(many):,.0f} max {max(many):,.0f})")
    print(f"ratio: {m2 / m1:.1f}x (target >= 15x)")


if __name__ == "__main__":
    main()
