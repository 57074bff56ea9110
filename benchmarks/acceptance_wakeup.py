"""Issue 3 acceptance: cross-process wake-up latency, mqlite vs Redis Streams.

Process A sends 10,000 messages at a moderate fixed rate; process B is
blocked in ``poll()`` (mqlite) or ``XREADGROUP ... BLOCK`` (Redis) and stamps
each message when its call returns.  Latency = B's return time minus A's
time right after its send returned (CLOCK_MONOTONIC is system-wide, so the
two processes' stamps are comparable).  Both systems run in the same
invocation, alternating, with matched durability ("none" vs no persistence):

    python benchmarks/acceptance_wakeup.py [--n 10000] [--rate 2000] [--rounds 3]

Target (issue 3): mqlite p50 < 100 us and p99 < 1 ms.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import cast

import mqlite

#: XREADGROUP's reply as this client reads it (RESP2, bytes): ``[(stream, [(id, fields)])]``.
#: redis-py >= 8 types the call with every protocol's shape, so the reads cast to this one.
XReadReply = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]
#: Per message: microseconds from before the send call, and from its return, to the receive.
Latencies = list[tuple[float, float]]


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


# -- mqlite ---------------------------------------------------------------------------------

def _mq_consumer(path: str, n: int, ready: Event, out: Queue[dict[int, int]]) -> None:
    b = mqlite.open(path, durability="none")
    c = b.consumer("lat")
    c.seek_to_end()
    stamps: dict[int, int] = {}
    ready.set()
    while len(stamps) < n:
        msgs = c.poll(max_records=1000, timeout=5.0)
        now = time.monotonic_ns()
        if not msgs:
            break
        for m in msgs:
            stamps[m.offset] = now
    out.put(stamps)
    b.close()


def run_mqlite(n: int, rate: float) -> Latencies:
    d = tempfile.mkdtemp(prefix="mqlite-lat-")
    try:
        b = mqlite.open(d, durability="none")
        b.create_topic("lat")
        ctx = mp.get_context("spawn")
        ready, out = ctx.Event(), ctx.Queue()
        p = ctx.Process(target=_mq_consumer, args=(d, n, ready, out))
        p.start()
        ready.wait(30)
        time.sleep(0.2)
        sent: dict[int, tuple[int, int]] = {}
        gap = 1.0 / rate
        nxt = time.monotonic()
        for i in range(n):
            t0 = time.monotonic_ns()
            md = b.send("lat", b"x" * 100)
            sent[md.offset] = (t0, time.monotonic_ns())
            nxt += gap
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        stamps = out.get(timeout=60)
        p.join(10)
        b.close()
        return [((stamps[o] - sent[o][0]) / 1000.0, (stamps[o] - sent[o][1]) / 1000.0)
                for o in sent if o in stamps]
    finally:
        shutil.rmtree(d, ignore_errors=True)


# -- redis ----------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis() -> tuple[subprocess.Popen | None, int, str]:
    exe = shutil.which("redis-server")
    if exe is None:
        return None, 0, ""
    port = _free_port()
    d = tempfile.mkdtemp(prefix="redis-lat-")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", d,
                             "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    r = redis.Redis(port=port)
    for _ in range(100):
        try:
            r.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    return proc, port, d


def _redis_consumer(port: int, n: int, ready: Event, out: Queue[dict[bytes, int]]) -> None:
    import redis

    r = redis.Redis(port=port)
    stamps: dict[bytes, int] = {}
    ready.set()
    while len(stamps) < n:
        res = cast(XReadReply, r.xreadgroup("g", "c1", {"lat": ">"}, count=1000, block=5000))
        now = time.monotonic_ns()
        if not res:
            break
        for _stream, entries in res:
            for mid, _fields in entries:
                stamps[mid] = now
    out.put(stamps)


def run_redis(port: int, n: int, rate: float) -> Latencies:
    import redis

    r = redis.Redis(port=port)
    r.delete("lat")
    r.xgroup_create("lat", "g", id="$", mkstream=True)
    ctx = mp.get_context("spawn")
    ready, out = ctx.Event(), ctx.Queue()
    p = ctx.Process(target=_redis_consumer, args=(port, n, ready, out))
    p.start()
    ready.wait(30)
    time.sleep(0.2)
    sent: dict[bytes, tuple[int, int]] = {}
    gap = 1.0 / rate
    nxt = time.monotonic()
    for _ in range(n):
        t0 = time.monotonic_ns()
        mid = cast(bytes, r.xadd("lat", {"v": b"x" * 100}))  # bytes: no decode_responses
        sent[mid] = (t0, time.monotonic_ns())
        nxt += gap
        delay = nxt - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    stamps = out.get(timeout=60)
    p.join(10)
    return [((stamps[k] - sent[k][0]) / 1000.0, (stamps[k] - sent[k][1]) / 1000.0)
            for k in sent if k in stamps]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=2000.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    proc, port, rdir = start_redis()
    if proc is None:
        print("redis-server not found: install it with `apt-get install -y redis-server`; "
              "running the mqlite rows only")
    results: dict[str, list[Latencies]] = {"mqlite": [], "redis": []}
    try:
        for _ in range(args.rounds):
            results["mqlite"].append(run_mqlite(args.n, args.rate))
            if proc is not None:
                results["redis"].append(run_redis(port, args.n, args.rate))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
            shutil.rmtree(rdir, ignore_errors=True)
    print(f"cross-process latency, {args.n} msgs at {args.rate:.0f}/s, {args.rounds} round(s) "
          f"(median over rounds of each percentile), microseconds")
    for idx, label in ((0, "from the send call (end to end)"), (1, "from the send's return")):
        print(f"\n{label}")
        print(f"{'system':8} {'p50':>8} {'p99':>8} {'p99.9':>8} {'max':>9} {'received':>9}")
        summary = {}
        for name, rounds in results.items():
            if not rounds:
                continue
            cols = [[x[idx] for x in r] for r in rounds]
            p50 = statistics.median(_pct(c, 50) for c in cols)
            p99 = statistics.median(_pct(c, 99) for c in cols)
            p999 = statistics.median(_pct(c, 99.9) for c in cols)
            mx = statistics.median(max(c) for c in cols)
            got = statistics.median(len(c) for c in cols)
            summary[name] = (p50, p99)
            print(f"{name:8} {p50:8.1f} {p99:8.1f} {p999:8.1f} {mx:9.1f} {got:9.0f}")
        if "redis" in summary and idx == 0:
            print(f"ratio redis/mqlite: p50 {summary['redis'][0] / summary['mqlite'][0]:.1f}x, "
                  f"p99 {summary['redis'][1] / summary['mqlite'][1]:.1f}x")
    print(f"pid {os.getpid()} done")


if __name__ == "__main__":
    main()
