"""Issue 3 acceptance: steady produce + retention keeps the data file bounded.

A producer appends 1 KiB messages (batches of 100 via send_batch, and single
sends) to a topic with ``retention_bytes`` for ``--seconds``, while a consumer
in another thread reads along.  Retention runs on appends (rate-limited).
Every second it records data.mdb's size and the retained bytes.

    python benchmarks/acceptance_retention.py [--seconds 60] [--retention-mib 32]

Target: data.mdb < 2 x retained bytes + 16 MiB throughout (checked at the end
and at the maximum).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time

import mqlite


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--retention-mib", type=int, default=32)
    ap.add_argument("--durability", default="none")
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="mqlite-ret-")
    limit = args.retention_mib << 20
    try:
        with mqlite.open(d, durability=args.durability) as b:
            b.create_topic("churn", partitions=2, retention_bytes=limit)
            stop = threading.Event()
            consumed = [0]

            def consume() -> None:
                c = b.consumer("churn")
                while not stop.is_set():
                    consumed[0] += len(c.poll(max_records=5000, timeout=0.2))

            t = threading.Thread(target=consume)
            t.start()
            value = os.urandom(1024)
            batch = [value] * 100
            data = os.path.join(d, "data.mdb")
            samples = []
            sent = 0
            start = time.monotonic()
            next_sample = start + 1
            while time.monotonic() - start < args.seconds:
                b.send_batch("churn", batch)
                b.send("churn", value)
                sent += 101
                if time.monotonic() >= next_sample:
                    next_sample += 1
                    retained = b.describe_topic("churn").bytes
                    samples.append((os.path.getsize(data), retained))
            stop.set()
            t.join()
            retained = b.describe_topic("churn").bytes
            size = os.path.getsize(data)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    mib = 1 << 20
    worst = max(s for s, _ in samples) if samples else size
    worst_bound = max(2 * r + 16 * mib for _, r in samples) if samples else 0
    print(f"{args.seconds:.0f}s churn, 1 KiB messages, retention_bytes={args.retention_mib} MiB, "
          f"durability {args.durability}: sent {sent:,} ({sent / args.seconds:,.0f}/s), "
          f"consumed {consumed[0]:,}")
    print(f"end: data.mdb {size / mib:.1f} MiB, retained {retained / mib:.1f} MiB, "
          f"bound 2 x retained + 16 MiB = {(2 * retained + 16 * mib) / mib:.1f} MiB "
          f"-> {'ok' if size < 2 * retained + 16 * mib else 'OVER'}")
    print(f"max over run: data.mdb {worst / mib:.1f} MiB (bound at most {worst_bound / mib:.1f} MiB)")


if __name__ == "__main__":
    main()
