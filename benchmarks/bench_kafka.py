"""Kafka backend figures (issue 15), against a wheel broker this script starts.

1. Adapter overhead: produce N records then consume them, through mqlite's
   Kafka backend (``broker.producer().send`` futures, ``consumer.poll``)
   and through raw confluent-kafka (``Producer.produce`` with a delivery
   callback, ``Consumer.consume``), same broker, same settings
   (idempotence, murmur2_random, linger 5 ms), interleaved rounds, medians.
   Target: mqlite >= 90% of raw.
2. ``mqlite mirror`` of M records across 6 partitions: time of the CLI
   process, then a per-partition comparison (order, keys, values, headers,
   timestamps) of source and target.

    python benchmarks/bench_kafka.py [--n 200000] [--rounds 5] [--mirror 1000000]

Needs ``pip install -e '.[test]'`` (confluent-kafka and the broker wheels).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import mqlite
from mqlite import TopicPartition as TP

VALUE = b"x" * 100
PARTITIONS = 6


def raw_round(bootstrap: str, topic: str, n: int) -> tuple[float, float, float, float]:
    from confluent_kafka import Consumer, Producer
    from confluent_kafka import TopicPartition as KTP

    acked = [0]

    def cb(err: Any, _msg: Any) -> None:
        if err is None:
            acked[0] += 1

    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                  "partitioner": "murmur2_random", "linger.ms": 5, "log_level": 3})
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        while True:
            try:
                p.produce(topic, VALUE, key=b"k%d" % (i % 1000), on_delivery=cb)
                break
            except BufferError:
                p.poll(0.05)
        if i % 1000 == 0:
            p.poll(0)
    p.flush()
    produce = time.perf_counter() - t0
    produce_cpu = time.process_time() - c0
    assert acked[0] == n
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"raw-{uuid.uuid4().hex}",
                  "enable.auto.commit": False, "log_level": 3})
    c.assign([KTP(topic, part, 0) for part in range(PARTITIONS)])
    got = 0
    t0, c0 = time.perf_counter(), time.process_time()
    while got < n:
        for m in c.consume(500, 1.0):
            if m.error() is None:
                _ = (m.key(), m.value(), m.headers(), m.timestamp())
                got += 1
    consume = time.perf_counter() - t0
    consume_cpu = time.process_time() - c0
    c.close()
    return produce, consume, produce_cpu, consume_cpu


def mqlite_round(url: str, topic: str, n: int,
                 keep: bool = False) -> tuple[float, float, float, float]:
    with mqlite.open(url, client_options={"log_level": 3}) as b:
        p = b.producer(linger_ms=5)
        t0, c0 = time.perf_counter(), time.process_time()
        if keep:  # every future kept in a list: 200k live objects for the GC to walk
            futs = [p.send(topic, VALUE, key=b"k%d" % (i % 1000)) for i in range(n)]
        else:  # as the raw side: each send's outcome is handled, nothing is kept
            for i in range(n):
                p.send(topic, VALUE, key=b"k%d" % (i % 1000))
        p.flush()
        produce = time.perf_counter() - t0
        produce_cpu = time.process_time() - c0
        if keep:
            assert all(f.done() for f in futs)
        ends = b.describe_topic(topic)
        assert ends.messages == n, ends
        p.close()
        c = b.consumer()
        c.assign([TP(topic, part) for part in range(PARTITIONS)])
        got = 0
        t0, c0 = time.perf_counter(), time.process_time()
        while got < n:
            got += len(c.poll(max_records=500, timeout=1.0))
        consume = time.perf_counter() - t0
        consume_cpu = time.process_time() - c0
        c.close()
    return produce, consume, produce_cpu, consume_cpu


def overhead(server: Any, n: int, rounds: int) -> dict[str, float]:
    sides = ("raw", "mq", "mqkeep")
    rows: dict[str, list[float]] = {f"{side}_{what}": [] for side in sides
                                    for what in ("produce", "consume", "produce_cpu",
                                                 "consume_cpu")}
    with mqlite.open(server.url, client_options={"log_level": 3}) as admin:
        for r in range(rounds):
            for side in (sides if r % 2 == 0 else sides[::-1]):
                topic = f"bench-{side}-{uuid.uuid4().hex[:8]}"
                admin.create_topic(topic, PARTITIONS)
                if side == "raw":
                    pr, co, pc, cc = raw_round(server.bootstrap, topic, n)
                else:
                    pr, co, pc, cc = mqlite_round(server.url, topic, n, keep=side == "mqkeep")
                rows[f"{side}_produce"].append(n / pr)
                rows[f"{side}_consume"].append(n / co)
                rows[f"{side}_produce_cpu"].append(pc / n * 1e6)  # client CPU µs per message
                rows[f"{side}_consume_cpu"].append(cc / n * 1e6)
                admin.delete_topic(topic)
    return {k: statistics.median(v) for k, v in rows.items()}


def digest(b: Any, topic: str, partition: int) -> tuple[int, str]:
    c = b.consumer()
    tp = TP(topic, partition)
    c.assign([tp])
    end = c.end_offsets([tp])[tp]
    h = hashlib.sha256()
    n = 0
    while c.position(tp) < end:
        for m in c.poll(max_records=5000, timeout=5.0):
            h.update(repr((m.key, m.value, m.headers, m.timestamp_ms)).encode())
            n += 1
    c.close()
    return n, h.hexdigest()


def mirror_run(server: Any, m: int) -> dict[str, Any]:
    src = Path(tempfile.mkdtemp()) / "src"
    topic = f"mirror-{uuid.uuid4().hex[:8]}"
    with mqlite.open(src, durability="none") as b:
        b.create_topic(topic, PARTITIONS)
        step = 10_000
        for i in range(0, m, step):
            js = range(i, min(m, i + step))
            b.send_batch(topic, [b"value-%d" % j for j in js], keys=[b"key-%d" % j for j in js],
                         headers=[[("seq", b"%d" % j)] for j in js])
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "mqlite", "mirror", str(src), server.url, "-q",
                        "--topics", topic], capture_output=True, text=True, check=True)
    took = time.perf_counter() - t0
    with mqlite.open(src) as s, mqlite.open(server.url, client_options={"log_level": 3}) as k:
        same = all(digest(s, topic, p) == digest(k, topic, p) for p in range(PARTITIONS))
    return {"records": m, "seconds": took, "per_second": m / took, "identical": same,
            "cli": r.stdout.strip()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000, help="records per overhead round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mirror", type=int, default=1_000_000, help="records to mirror (0: skip)")
    args = ap.parse_args()
    from _kafka_server import start

    server = start()
    try:
        print(f"broker: {server.kind} (started in {server.start_seconds:.2f} s)")
        med = overhead(server, args.n, args.rounds)
        for what in ("produce", "consume"):
            raw = med[f"raw_{what}"]
            for side, label in (("mq", "mqlite"), ("mqkeep", "mqlite, futures kept")):
                mq = med[f"{side}_{what}"]
                print(f"{what:8s} raw confluent-kafka {raw:>10,.0f} msg/s   {label:>20s} "
                      f"{mq:>10,.0f} msg/s   ratio {mq / raw:.1%} (target >= 90%)   client "
                      f"CPU per message: raw {med[f'raw_{what}_cpu']:.2f} µs, "
                      f"{label} {med[f'{side}_{what}_cpu']:.2f} µs")
        if args.mirror:
            res = mirror_run(server, args.mirror)
            print(f"mirror   {res['records']:,} records, {PARTITIONS} partitions: "
                  f"{res['seconds']:.1f} s ({res['per_second']:,.0f} msg/s), identical: "
                  f"{res['identical']}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
