"""Issue 12 acceptance: the example shop under load, with a worker SIGKILLed mid-run.

    python benchmarks/acceptance_app_flow.py [--orders 10000] [--kill] [--durability none]

Runs ``examples/`` as real processes: ``mqlite run payments:app --workers 3``
(exactly-once, retries, DLQ), ``notifications:app``, ``analytics:app`` (1 worker),
``dlq_monitor:app``; publishes ``--orders`` orders (5% flaky cards: one transient
failure each; 1% declined: permanent), optionally SIGKILLs one payments worker
once a third of the payments are out, waits until every order is paid or
dead-lettered, then SIGTERMs everything and checks:

* every order paid exactly once (payments is exactly-once) or dead-lettered;
* dead letters after exactly one attempt, reason ``rejected: card declined``;
* flaky orders paid on attempt 2, after the backoff (order -> payment latency
  of flaky vs other orders, medians);
* analytics saw every order (its committed offsets reach the end);
* notifications (at-least-once, an ``async def`` taking ``ctx`` with a publisher)
  sent one notification per payment, none twice (none of its workers is killed);
* every service exited 0 on SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec

import mqlite
from mqlite import Message, TopicPartition

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _order_id(m: Message) -> Any:
    assert m.value is not None  # every record of this flow carries a JSON value
    return msgspec.json.decode(m.value)["orderId"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--orders", type=int, default=10_000)
    ap.add_argument("--kill", action="store_true", help="SIGKILL one payments worker mid-run")
    ap.add_argument("--durability", default="none", choices=["sync", "lazy", "none"])
    args = ap.parse_args()
    n = args.orders
    d = tempfile.mkdtemp(prefix="mqlite-shop-")
    env = dict(os.environ, MQLITE_DIR=d, MQLITE_DURABILITY=args.durability,
               PYTHONPATH=os.pathsep.join([str(EXAMPLES), str(ROOT / "src")]))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        b = mqlite.open(d, durability="none")
        for t, p in (("order-created", 6), ("payment-processed", 6), ("notification-sent", 6),
                     ("alerts", 1), ("order-created.dlq", 1)):
            b.create_topic(t, partitions=p)
        for name, extra in (("payments", ["--workers", "3", "--health-port", "0"]),
                            ("notifications", []), ("analytics", []), ("dlq_monitor", [])):
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "mqlite", "run", f"{name}:app", *extra,
                 "--log-level", "error"], cwd=EXAMPLES, env=env,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        t0 = time.monotonic()
        subprocess.run([sys.executable, "order_service.py", "--orders", str(n)], cwd=EXAMPLES,
                       env=env, check=True, capture_output=True)
        t_pub = time.monotonic() - t0
        rng = random.Random(1)
        cards = {}
        for i in range(n):  # replay the generator's draws
            r = rng.random()
            rng.randrange(100)
            rng.uniform(5, 500)
            cards[i] = "declined" if r < 0.01 else "flaky" if r < 0.06 else "ok"
        declined = sum(c == "declined" for c in cards.values())
        c = b.consumer(None)
        tps = [TopicPartition("payment-processed", p) for p in range(6)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        paid: list[tuple[int, int]] = []
        killed = None
        while len(paid) < n - declined:
            for m in c.poll(1000, timeout=5.0):
                paid.append((_order_id(m), m.timestamp_ms))
            if args.kill and killed is None and len(paid) >= n // 3:
                workers = [int(x) for x in subprocess.run(
                    ["pgrep", "-P", str(procs["payments"].pid)], capture_output=True,
                    text=True, check=False).stdout.split()]
                killed = workers[0]
                os.kill(killed, signal.SIGKILL)
            if time.monotonic() - t0 > 600:
                raise SystemExit(f"timed out: {len(paid)} of {n - declined} paid")
        t_all = time.monotonic() - t0
        c.close()
        # notifications (at-least-once, the default) commits to the end of what payments
        # published before the SIGTERM, so every payment must have its notification
        pp_ends = {p.partition: p.end_offset
                   for p in b.describe_topic("payment-processed").partitions}
        while b.committed_offsets("notifications", "payment-processed") != pp_ends:
            if time.monotonic() - t0 > 600:
                raise SystemExit("timed out waiting for notifications to commit")
            time.sleep(0.05)
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        rcs = {k: p.wait(120) for k, p in procs.items()}
        outs = {k: p.stdout.read().decode() if p.stdout else "" for k, p in procs.items()}
        counts = Counter(i for i, _ in paid)
        dls = b.dead_letters("order-created.dlq")
        order_ts = {}
        for p in range(6):
            for m in b.read("order-created", p, 0, 100_000):
                order_ts[_order_id(m)] = m.timestamp_ms
        lat: dict[str, list[int]] = {"flaky": [], "ok": []}
        for i, ts in paid:
            lat[cards[i]].append(ts - order_ts[i])
        ends = {p.partition: p.end_offset for p in b.describe_topic("order-created").partitions}
        analytics = b.committed_offsets("analytics", "order-created")
        notes = Counter(_order_id(m) for p in range(6)
                        for m in b.read("notification-sent", p, 0, 100_000))
        print(f"orders: {n} published in {t_pub:.1f} s; all paid or dead-lettered after "
              f"{t_all:.1f} s; durability {args.durability}")
        print(f"paid: {len(counts)} distinct, max copies per order {max(counts.values())} "
              f"(exactly-once: 1); declined {declined}, dead letters {len(dls)}, "
              f"attempts {sorted({dl.delivery_count for dl in dls}, key=lambda c: c or 0)}, "
              f"reasons {sorted({dl.reason for dl in dls}, key=lambda r: r or '')}")
        print(f"order -> payment latency, median: ok {statistics.median(lat['ok']):.0f} ms, "
              f"flaky {statistics.median(lat['flaky']):.0f} ms "
              f"(one retry after Backoff.exponential(base=0.05): 25-50 ms)")
        print(f"notifications (at-least-once): {len(notes)} distinct of {len(counts)} paid, "
              f"max copies {max(notes.values())} (no notifications worker killed: 1)")
        print(f"analytics committed == end offsets: {analytics == ends}; "
              f"payments worker SIGKILLed: {killed}; exit codes on SIGTERM: {rcs}")
        ok = (max(counts.values()) == 1 and len(counts) + len(dls) == n
              and {dl.delivery_count for dl in dls} == {1} and analytics == ends
              and set(notes) == set(counts) and max(notes.values()) == 1
              and set(rcs.values()) == {0})
        print("OK" if ok else "FAILED")
        if not ok:
            print(outs)
        b.close()
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
