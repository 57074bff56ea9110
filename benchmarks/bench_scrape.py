"""Scrape time of the broker-state Prometheus collector (issue 13: < 200 ms median).

Builds a broker with ``--topics`` topics x ``--partitions`` partitions (one
small batch in every partition), ``--groups`` stream groups each with
committed offsets on ``--group-topics`` topics, and ``--queues`` queue
groups with messages in flight and a dead-letter topic; then times, per
round, the parts of one scrape:

* ``stats``    ``broker.stats()`` (one read transaction, no group joined)
* ``families`` stats + building the metric families
* ``render``   ``BrokerCollector.families`` + the exposition text
               (``mqlite metrics``' path: GC paused, no label-value tuples)
* ``http``     a GET of ``/metrics`` from ``mqlite.metrics.serve`` (the target)
* ``registry`` ``prometheus_client.generate_latest`` over a registry holding
               the collector (the generic path, for comparison)

Run: ``python benchmarks/bench_scrape.py [--rounds 15]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import urllib.request

import mqlite
from mqlite.metrics import BrokerCollector, render, serve, stats_families


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
        times: dict[str, list[float]] = {"stats": [], "families": [], "render": [], "http": [],
                                         "registry": []}
        size = lines = 0
        for _ in range(a.rounds):
            t = time.perf_counter()
            s = b.stats()
            times["stats"].append(time.perf_counter() - t)
            t = time.perf_counter()
            stats_families(b.stats())
            times["families"].append(time.perf_counter() - t)
            t = time.perf_counter()
            text = render(col.families(label_values=False))
            times["render"].append(time.perf_counter() - t)
            t = time.perf_counter()
            with urllib.request.urlopen(url, timeout=30) as r:
                body = r.read()
            times["http"].append(time.perf_counter() - t)
            t = time.perf_counter()
            pc.generate_latest(reg)
            times["registry"].append(time.perf_counter() - t)
            size, lines = len(body), text.count(b"\n")
        server.shutdown()
        print(f"{len(s.partitions)} partitions, {sum(len(g.lag) for g in s.groups)} lag series, "
              f"{lines} exposition lines, {size} bytes")
        print(f"{'part':10} {'median ms':>10} {'min ms':>8} {'max ms':>8}   (target: http "
              f"< 200 ms median)")
        for k, v in times.items():
            print(f"{k:10} {statistics.median(v) * 1e3:10.1f} {min(v) * 1e3:8.1f} "
                  f"{max(v) * 1e3:8.1f}")
        b.close()


if __name__ == "__main__":
    main()
