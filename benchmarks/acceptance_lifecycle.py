"""Issue 9 acceptance: how fast wakeup()/close() end a blocked poll/receive.

For each round a thread blocks in ``poll(timeout=30)`` (or ``receive``); once
it is inside the call the main thread lets it settle into the futex wait
(``--settle`` ms), stamps the time and calls ``wakeup()`` (or ``close()`` from
another thread, or ``close()`` from a SIGUSR1 handler).  Latency = the
blocked call's return time minus that stamp (one process, CLOCK_MONOTONIC):

    python benchmarks/acceptance_lifecycle.py [--rounds 200] [--settle 5]

Target (issue 9): a blocked ``poll(timeout=30)`` returns in < 50 ms.
"""

from __future__ import annotations

import argparse
import functools
import signal
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import mqlite


def _round(obj: Any, call: Callable[[], Any], trigger: Callable[[], None],
           settle: float) -> float:
    done: list[float] = []

    def blocked() -> None:
        call()
        done.append(time.perf_counter())

    t = threading.Thread(target=blocked)
    t.start()
    while not obj._life._users:
        time.sleep(0)
    time.sleep(settle)  # let it reach futex_wait
    t0 = time.perf_counter()
    trigger()
    t.join(30)
    return done[0] - t0


def _signal_round(obj: Any, call: Callable[[], Any], settle: float) -> float:
    """The main thread blocks; a helper signals it; the handler closes."""
    main = threading.main_thread().ident
    assert main is not None  # the main thread is running: it called this
    sent: list[float] = []

    def fire() -> None:
        while not obj._life._users:
            time.sleep(0)
        time.sleep(settle)
        sent.append(time.perf_counter())
        signal.pthread_kill(main, signal.SIGUSR1)

    old = signal.signal(signal.SIGUSR1, lambda *_: obj.close())
    try:
        t = threading.Thread(target=fire)
        t.start()
        call()
        end = time.perf_counter()
        t.join()
    finally:
        signal.signal(signal.SIGUSR1, old)
    return end - sent[0]


def _report(name: str, xs: list[float]) -> None:
    xs = sorted(xs)
    p99 = xs[min(len(xs) - 1, int(len(xs) * 0.99))]
    print(f"{name:40s} n={len(xs):4d}  median {statistics.median(xs) * 1e6:8.1f} us  "
          f"p99 {p99 * 1e6:8.1f} us  max {xs[-1] * 1e6:8.1f} us")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--settle", type=float, default=5.0, help="ms to let the waiter block")
    args = ap.parse_args()
    settle = args.settle / 1000.0
    with tempfile.TemporaryDirectory() as d, mqlite.open(d, durability="none") as b:
        b.create_topic("t")
        c = b.consumer("t", group="g")
        _report("consumer.wakeup() from a thread",
                [_round(c, lambda: c.poll(timeout=30), c.wakeup, settle)
                 for _ in range(args.rounds)])
        q = b.queue("t", "q")
        _report("queue.wakeup() from a thread",
                [_round(q, lambda: q.receive(timeout=30), q.wakeup, settle)
                 for _ in range(args.rounds)])
        xs = []
        for _ in range(max(1, args.rounds // 4)):
            c2 = b.consumer("t", group="g")
            xs.append(_round(c2, functools.partial(c2.poll, timeout=30), c2.close, settle))
        _report("consumer.close() from a thread", xs)
        xs = []
        for _ in range(max(1, args.rounds // 4)):
            c3 = b.consumer("t", group="g")
            xs.append(_signal_round(c3, functools.partial(c3.poll, timeout=30), settle))
        _report("consumer.close() in a signal handler", xs)


if __name__ == "__main__":
    main()
