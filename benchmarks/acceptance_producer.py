"""Issue 3 acceptance: group commit under durability "sync".

Row 1: one thread calling ``broker.send()`` (one fsync'd transaction each).
Row 2: 32 threads each calling ``producer.send(...).result()`` on one shared
``broker.producer(linger_ms=...)``: concurrent sends share transactions.
Row 3 (the ceiling): the same 32 threads handing a :class:`mqlite.SendFuture`
to a thread that resolves it at once, no storage at all — what CPython can do
when every send blocks its thread until another thread wakes it.

    python benchmarks/acceptance_producer.py [--seconds 3] [--runs 5] [--linger-ms 0]
        [--fsync-delay-us N]

``--fsync-delay-us N`` re-runs the script under ``_slow_fsync.c`` (built with
gcc into a temporary directory, loaded with LD_PRELOAD) so that every fsync /
fdatasync takes N µs longer: a device with a slower cache flush than this
machine's virtual disk.  The rows are labelled with it.

Target: row 2 >= 15x row 1 (medians of interleaved runs).  Row 2 cannot exceed
row 3, so the target needs row 1 <= row 3 / 15: a commit that costs at least
15 / row-3 seconds (docs/decisions.md D15).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import mqlite
from mqlite.future import SendFuture

SHIM_SRC = Path(__file__).with_name("_slow_fsync.c")


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


def _run_threads(work: Callable[[int, threading.Event, list[int]], None], threads: int,
                 seconds: float) -> float:
    """Run ``work(i, stop, counts)`` on ``threads`` threads for ``seconds``; calls per second."""
    counts = [0] * threads
    stop = threading.Event()
    ts = [threading.Thread(target=work, args=(i, stop, counts)) for i in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in ts:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def threaded(path: str, seconds: float, threads: int, linger_ms: float) -> float:
    with mqlite.open(path, durability="sync") as b:
        b.create_topic("m", exist_ok=True)
        with b.producer(linger_ms=linger_ms) as prod:

            def work(i: int, stop: threading.Event, counts: list[int]) -> None:
                v = bytes(100)
                while not stop.is_set():
                    prod.send("m", v).result()
                    counts[i] += 1

            return _run_threads(work, threads, seconds)


def ceiling(seconds: float, threads: int) -> float:
    """Sends per second when each thread blocks on a future another thread resolves."""
    lock = threading.Lock()
    wake = threading.Condition(lock)
    queue: list[SendFuture[int]] = []
    done = threading.Event()

    def resolver() -> None:
        nonlocal queue
        while not done.is_set():
            with lock:
                while not queue and not done.is_set():
                    wake.wait(0.01)
                items, queue = queue, []
            for f in items:
                f.set_result(0)

    def work(i: int, stop: threading.Event, counts: list[int]) -> None:
        while not stop.is_set():
            f: SendFuture[int] = SendFuture()
            with lock:
                queue.append(f)
                if len(queue) == 1:
                    wake.notify()
            f.result()
            counts[i] += 1

    r = threading.Thread(target=resolver)
    r.start()
    try:
        return _run_threads(work, threads, seconds)
    finally:
        done.set()
        r.join()


def _reexec_with_slow_fsync(delay_us: int) -> int:
    """Build the shim and run this script again under it; return its exit status."""
    tmp = tempfile.mkdtemp(prefix="mqlite-shim-")
    try:
        so = os.path.join(tmp, "slow_fsync.so")
        try:
            subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", so, str(SHIM_SRC), "-ldl"],
                           check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"cannot build {SHIM_SRC.name} with gcc ({exc}); run without --fsync-delay-us")
            return 2
        env = dict(os.environ, LD_PRELOAD=so, MQLITE_BENCH_FSYNC_US=str(delay_us))
        return subprocess.run([sys.executable, *sys.argv], env=env, check=False).returncode
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--linger-ms", type=float, default=0.0)
    ap.add_argument("--fsync-delay-us", type=int, default=0)
    args = ap.parse_args()
    delay = os.environ.get("MQLITE_BENCH_FSYNC_US")
    if args.fsync_delay_us > 0 and delay is None:
        sys.exit(_reexec_with_slow_fsync(args.fsync_delay_us))
    one, many, top = [], [], []
    for _ in range(args.runs):  # interleaved A B C A B C
        d = tempfile.mkdtemp(prefix="mqlite-prod-")
        try:
            one.append(single(d, args.seconds))
            many.append(threaded(d, args.seconds, args.threads, args.linger_ms))
            top.append(ceiling(args.seconds, args.threads))
        finally:
            shutil.rmtree(d, ignore_errors=True)
    m1, m2, m3 = statistics.median(one), statistics.median(many), statistics.median(top)
    disk = f"fsync +{delay} us (simulated slower device)" if delay else "this machine's disk"
    print(f"durability sync, 100 B values, {args.runs} interleaved runs of {args.seconds}s, {disk}")
    rows = [("1 thread, broker.send()", one, m1),
            (f"{args.threads} threads, producer.send().result()", many, m2),
            (f"ceiling: {args.threads} threads, future handoff only", top, m3)]
    for label, xs, m in rows:
        print(f"{label:<50} {m:10,.0f} msgs/s  (min {min(xs):,.0f} max {max(xs):,.0f})")
    print(f"ratio: {m2 / m1:.1f}x (target >= 15x); row 2 is {m2 / m3:.0%} of the ceiling;"
          f" 15x needs row 1 <= {m3 / 15:,.0f} msgs/s")


if __name__ == "__main__":
    main()
