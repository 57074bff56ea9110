"""The examples run as real processes and produce the documented outcome."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
from _shop import example_env, publish_orders, shop_services, stop_all, wait_analytics_caught_up
from _values import value

import mqlite
from mqlite import TopicPartition

TIMEOUT = 180.0


def _read_until(b: mqlite.Broker, topic: str, n: int) -> list[Any]:
    """Every message of ``topic`` once there are ``n`` (blocking polls, no sleeps)."""
    c = b.consumer(None)
    tps = [TopicPartition(topic, p) for p in range(b.partitions_for(topic))]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    out: list[Any] = []
    end = time.monotonic() + TIMEOUT
    try:
        while len(out) < n:
            assert time.monotonic() < end, f"{topic}: {len(out)} of {n} messages"
            out += [msgspec.json.decode(value(m)) for m in c.poll(1000, timeout=1.0)]
    finally:
        c.close()
    return out


def test_shop_flow(tmp_broker_dir: Path) -> None:
    n = 400
    env = example_env(MQLITE_DIR=str(tmp_broker_dir), MQLITE_DURABILITY="none")
    with mqlite.open(tmp_broker_dir, durability="none") as b:  # so the test can read them now
        for topic, parts in (("order-created", 6), ("payment-processed", 6),
                             ("notification-sent", 6), ("alerts", 1)):
            b.create_topic(topic, partitions=parts, exist_ok=True)
    with shop_services(env, 2, TIMEOUT) as procs:
        declined = publish_orders(env, n, TIMEOUT)
        with mqlite.open(tmp_broker_dir, durability="none") as b:
            paid = _read_until(b, "payment-processed", n - declined)
            sent = _read_until(b, "notification-sent", n - declined)
            alerts = _read_until(b, "alerts", declined)
            want = wait_analytics_caught_up(b, TIMEOUT)
            outs = stop_all(procs, TIMEOUT)
            # exactly once per order, declined ones in the DLQ after one attempt
            paid = _read_until(b, "payment-processed", n - declined)
            assert len(paid) == n - declined
            assert len(set(Counter(p["orderId"] for p in paid).values())) == 1
            dls = b.dead_letters("order-created.dlq")
            assert len(dls) == declined
            assert all(d.delivery_count == 1 and d.reason == "rejected: card declined"
                       for d in dls)
            assert {p["orderId"] for p in paid} | {
                msgspec.json.decode(d.message.value)["orderId"] for d in dls} == set(range(n))
            assert sorted(s["orderId"] for s in sent) == sorted(p["orderId"] for p in paid)
            assert len(alerts) == declined and all(a["error"] == "Reject: card declined"
                                                   for a in alerts)
            assert b.committed_offsets("analytics", "order-created") == want
            assert f"analytics: {n} orders" in outs[2]
