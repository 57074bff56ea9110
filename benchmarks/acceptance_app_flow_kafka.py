"""Issue 15 acceptance: the example shop, unchanged, against ``kafka://`` (a wheel broker).

    python benchmarks/acceptance_app_flow_kafka.py [--orders 10000] [--kill]

The Kafka twin of ``acceptance_app_flow.py``: starts a Kafka-protocol broker
from its wheel (tests/_kafka_server.py: noida-db, else Tansu), sets
``MQLITE_DIR=kafka://...`` and runs ``examples/`` as real processes:
``mqlite run payments:app --workers 3`` (exactly-once through Kafka
transactions, retries, a dead-letter topic), ``notifications:app``,
``analytics:app``, ``dlq_monitor:app``; publishes ``--orders`` orders (5%
flaky cards: one transient failure each; 1% declined), optionally SIGKILLs
one payments worker once a third of the payments are out (``--kill``: while
the generator is still publishing, so the flow needs that worker's
partitions again), waits until every order is paid or dead-lettered,
SIGTERMs everything and checks:

* every order paid exactly once or dead-lettered (read ``read_committed``);
* dead letters after exactly one attempt, reason ``rejected: card declined``;
* flaky orders paid on attempt 2, after the backoff (latency medians);
* analytics saw every order (its committed offsets reach the end);
* every service exited 0 on SIGTERM.

``--kill`` cannot pass on the wheel brokers (docs/scale-out.md, "A worker
SIGKILLed mid-run"): noida-db never expires the dead worker's group
membership, so the group stops at the next rebalance, and Tansu serves an
aborted transaction's records to ``read_committed`` readers.  The script says
so and exits 2 there unless ``--force``; run it against a real cluster with
``MQLITE_TEST_KAFKA_URL=kafka://...``.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec

import mqlite
from mqlite import Message, TopicPartition

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(ROOT / "tests"))
OPTS = {"log_level": 3}


def _order_id(m: Message) -> Any:
    assert m.value is not None  # every record of this flow carries a JSON value
    return msgspec.json.decode(m.value)["orderId"]


def read_all(b: Any, topic: str, until: int | None = None,
             timeout: float = 600.0) -> list[mqlite.Message]:
    """Committed messages of ``topic``: up to its end now, or until ``until`` of them."""
    c = b.consumer(None)
    tps = [TopicPartition(topic, p) for p in range(b.partitions_for(topic))]
    c.assign(tps)
    ends = c.end_offsets(tps)
    out: list[mqlite.Message] = []
    t0 = time.monotonic()
    while (len(out) < until) if until is not None else any(
            c.position(tp) < ends[tp] for tp in tps):
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"timed out reading {topic}: {len(out)} messages")
        out += c.poll(1000, timeout=1.0)
        if until is None:  # transaction markers take offsets: stop at an empty poll too
            ends = {tp: e for tp, e in ends.items() if c.position(tp) < e}
            tps = list(ends)
    c.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--orders", type=int, default=10_000)
    ap.add_argument("--kill", action="store_true", help="SIGKILL one payments worker mid-run")
    ap.add_argument("--force", action="store_true",
                    help="run --kill on a wheel broker anyway (it stalls there)")
    ap.add_argument("--timeout", type=float, default=900.0,
                    help="seconds to wait for every order (default 900)")
    args = ap.parse_args()
    n = args.orders
    from _kafka_server import KILL_UNSUPPORTED, start

    server = start()
    if args.kill and server.kind in KILL_UNSUPPORTED and not args.force:
        server.stop()
        print(f"--kill cannot pass on {server.kind}: {KILL_UNSUPPORTED[server.kind]}")
        raise SystemExit(2)
    env = dict(os.environ, MQLITE_DIR=server.url,
               PYTHONPATH=os.pathsep.join([str(EXAMPLES), str(ROOT / "src")]))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        b = mqlite.open(server.url, client_options=OPTS)
        for t, p in (("order-created", 6), ("payment-processed", 6), ("notification-sent", 6),
                     ("alerts", 1), ("order-created.dlq", 1)):
            b.create_topic(t, partitions=p)
        for name, extra in (("payments", ["--workers", "3"]), ("notifications", []),
                            ("analytics", []), ("dlq_monitor", [])):
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "mqlite", "run", f"{name}:app", *extra,
                 "--log-level", "error"], cwd=EXAMPLES, env=env,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        t0 = time.monotonic()
        gen = subprocess.Popen([sys.executable, "order_service.py", "--orders", str(n)],
                               cwd=EXAMPLES, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
        procs["order_service"] = gen
        t_pub: float | None = None
        if not args.kill:
            gen.wait()
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
        c.assign([TopicPartition("payment-processed", p) for p in range(6)])
        paid: list[tuple[int, int]] = []
        killed = None
        while len(paid) < n - declined:
            for m in c.poll(1000, timeout=5.0):
                paid.append((_order_id(m), m.timestamp_ms))
            if t_pub is None and gen.poll() is not None:
                t_pub = time.monotonic() - t0
            if args.kill and killed is None and len(paid) >= n // 3:
                if gen.poll() is not None:
                    raise SystemExit("the generator finished before a third of the orders "
                                     "were paid: the kill would test nothing; use more "
                                     "--orders")
                workers = [int(x) for x in subprocess.run(
                    ["pgrep", "-P", str(procs["payments"].pid)], capture_output=True,
                    text=True, check=False).stdout.split()]
                killed = workers[0]
                os.kill(killed, signal.SIGKILL)
            if time.monotonic() - t0 > args.timeout:
                raise SystemExit(f"timed out: {len(paid)} of {n - declined} paid")
        t_all = time.monotonic() - t0
        if gen.wait() != 0:
            raise SystemExit("the order generator failed")
        if t_pub is None:
            t_pub = time.monotonic() - t0
        c.close()
        dls = read_all(b, "order-created.dlq", until=declined)
        ends = {p.partition: p.end_offset for p in b.describe_topic("order-created").partitions}
        deadline = time.monotonic() + 300
        while b.committed_offsets("analytics", "order-created") != ends and \
                time.monotonic() < deadline:
            time.sleep(0.5)  # another process's commits: nothing to wait on but polling
        del procs["order_service"]
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        rcs = {k: p.wait(120) for k, p in procs.items()}
        outs = {k: p.stdout.read().decode() if p.stdout else "" for k, p in procs.items()}
        counts = Counter(i for i, _ in paid)
        order_ts = {_order_id(m): m.timestamp_ms
                    for m in read_all(b, "order-created")}
        lat: dict[str, list[int]] = {"flaky": [], "ok": []}
        for i, ts in paid:
            lat[cards[i]].append(ts - order_ts[i])
        analytics = b.committed_offsets("analytics", "order-created")
        attempts = sorted({int(dict(d.headers)["x-delivery-count"]) for d in dls})
        reasons = sorted({dict(d.headers)["x-dead-letter-reason"].decode() for d in dls})
        print(f"broker: {server.kind}; orders: {n} published in {t_pub:.1f} s; all paid or "
              f"dead-lettered after {t_all:.1f} s")
        print(f"paid: {len(counts)} distinct, max copies per order {max(counts.values())} "
              f"(exactly-once: 1); declined {declined}, dead letters {len(dls)}, "
              f"attempts {attempts}, reasons {reasons}")
        print(f"order -> payment latency, median: ok {statistics.median(lat['ok']):.0f} ms, "
              f"flaky {statistics.median(lat['flaky']):.0f} ms "
              f"(one retry after Backoff.exponential(base=0.05): 25-50 ms)")
        print(f"analytics committed == end offsets: {analytics == ends}; "
              f"payments worker SIGKILLed: {killed}; exit codes on SIGTERM: {rcs}")
        ok = (max(counts.values()) == 1 and len(counts) + len(dls) == n and attempts == [1]
              and analytics == ends and set(rcs.values()) == {0})
        print("OK" if ok else "FAILED")
        if not ok:
            print(outs)
        b.close()
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        server.stop()


if __name__ == "__main__":
    main()
