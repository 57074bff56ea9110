"""Scrape time of the broker-state Prometheus collector (issue 13: < 200 ms median).

Builds a broker with ``--topics`` topics x ``--partitions`` partitions (one
small batch in every partition), ``--groups`` stream groups each with
committed offsets on ``--group-topics`` topics, and ``--queues`` queue
groups with messages in flight and a dead-letter topic; then times, per
round, the parts of one scrape:

* ``stats``    ``broker.stats()`` (one read transaction, no group joined)
* ``render``   ``BrokerCollector.exposition()``: stats + the exposition text
               (``mqlite metrics``' path, without the socket)
* ``http``     a GET of ``/metrics`` from ``mqlite.metrics.serve`` (the target)
* ``registry`` ``prometheus_client.generate_latest`` over a registry holding
               the collector (the generic path, for comparison)

Wall time and this process's CPU time (``time.process_time``: less disturbed
by other load on the machine) are both printed, with the load average.

Run: ``python benchmarks/bench_scrape.py [--rounds 21]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Callable
from typing import TypeVar

import mqlite
from mqlite.metrics import BrokerCollector, serve

T = TypeVar("T")


def build(path: str, topics: int, partitions: int, groups: int, group_topics: int,
          queues: int) -> mqlite.Broker:
    b = mqlite.open(path, durability="none")
    names = [f"t{i:04d}" for i in range(topics)]
    for n in names:
        b.create_topic(n, partitions)
        for p in range(partitions):
            b.send_batch(n, [b"x" * 100] * 10, partition=p)
    for g in range(groups):
        for j in range(group_topics):
            b.reset_offsets(f"g{g:03d}", names[(g + j) % topics], to=5)
    for q in range(queues):
        queue = b.queue(names[q], f"q{q}", max_deliveries=1, dead_letter_topic=f"dlq{q}")
        got = queue.receive(max_messages=20, timeout=1.0)
        got[0].nack()  # dead-lettered: max_deliveries=1
        queue.close()
    return b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--topics", type=int, default=1000)
    ap.add_argument("--partitions", type=int, default=10)
    ap.add_argument("--groups", type=int, default=100)
    ap.add_argument("--group-topics", type=int, default=10)
    ap.add_argument("--queues", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=15)
    a = ap.parse_args()
    import prometheus_client as pc

    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        b = build(f"{d}/b", a.topics, a.partitions, a.groups, a.group_topics, a.queues)
        print(f"built {a.topics} topics x {a.partitions} partitions, {a.groups} groups x "
              f"{a.group_topics} topics, {a.queues} queue groups in "
              f"{time.perf_counter() - t0:.1f} s")
        reg = pc.CollectorRegistry()
        col = BrokerCollector(b)
        reg.register(col)
        server, _ = serve(b, 0)
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        times: dict[str, list[float]] = {k: [] for k in ("stats", "render", "http", "registry")}
        cpu: dict[str, list[float]] = {k: [] for k in times}
        size = lines = 0

        def timed(part: str, fn: Callable[[], T]) -> T:
            t, c = time.perf_counter(), time.process_time()
            out = fn()
            times[part].append(time.perf_counter() - t)
            cpu[part].append(time.process_time() - c)
            return out

        def get() -> bytes:
            with urllib.request.urlopen(url, timeout=60) as r:
                return r.read()

        for _ in range(a.rounds):
            s = timed("stats", b.stats)
            text = timed("render", col.exposition)
            body = timed("http", get)
            timed("registry", lambda: pc.generate_latest(reg))
            size, lines = len(body), text.count(b"\n")
        server.shutdown()
        print(f"{len(s.partitions)} partitions, {sum(len(g.lag) for g in s.groups)} lag series, "
              f"{lines} exposition lines, {size} bytes")
        print(f"os.getloadavg() = {os.getloadavg()}   (target: http < 200 ms median)")
        print(f"{'part':10} {'median ms':>10} {'min ms':>8} {'max ms':>8} {'cpu median ms':>14}")
        for k, v in times.items():
            print(f"{k:10} {statistics.median(v) * 1e3:10.1f} {min(v) * 1e3:8.1f} "
                  f"{max(v) * 1e3:8.1f} {statistics.median(cpu[k]) * 1e3:14.1f}")
        b.close()


if __name__ == "__main__":
    main()
