"""The example shop (examples/) runs unchanged against ``kafka://`` (issue 15 acceptance).

``MQLITE_DIR=kafka://...`` is the only change: payments with 3 worker
processes (exactly-once through Kafka transactions, retries, a dead-letter
topic), notifications, analytics and the dead-letter monitor, as real
``mqlite run`` processes; counts as in the embedded flow
(tests/app/test_examples.py).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import msgspec
import pytest
from _shop import example_env, publish_orders, shop_services, stop_all, wait_analytics_caught_up
from _values import value
from test_kafka_app import _read

pytest.importorskip("confluent_kafka")

import mqlite

TIMEOUT = 240.0
OPTS = {"log_level": 3}


def _read_until(b: Any, topic: str, n: int) -> list[mqlite.Message]:
    """Every committed message of ``topic`` once there are ``n`` (blocking polls)."""
    return _read(b, topic, n, TIMEOUT)


def test_shop_flow_on_kafka_with_3_payment_workers(kafka_url: str) -> None:
    n = 300
    env = example_env(MQLITE_DIR=kafka_url)
    with mqlite.open(kafka_url, client_options=OPTS) as b:
        # a fresh cluster per session, but the test may run twice against an external one
        for t in ("order-created", "payment-processed", "notification-sent", "alerts",
                  "order-created.dlq"):
            if t in b.topics():
                b.delete_topic(t)
        for topic, parts in (("order-created", 6), ("payment-processed", 6),
                             ("notification-sent", 6), ("alerts", 1),
                             ("order-created.dlq", 1)):
            b.create_topic(topic, partitions=parts)
    with shop_services(env, 3, TIMEOUT) as procs:
        declined = publish_orders(env, n, TIMEOUT)
        with mqlite.open(kafka_url, client_options=OPTS) as b:
            paid = [msgspec.json.decode(value(m)) for m in
                    _read_until(b, "payment-processed", n - declined)]
            sent = _read_until(b, "notification-sent", n - declined)
            alerts = [msgspec.json.decode(value(m))
                      for m in _read_until(b, "alerts", declined)]
            want = wait_analytics_caught_up(b, TIMEOUT)
            outs = stop_all(procs, TIMEOUT)
            # exactly once per order (Kafka transactions), declined ones dead-lettered once
            paid = [msgspec.json.decode(value(m)) for m in
                    _read_until(b, "payment-processed", n - declined)]
            assert len(paid) == n - declined
            assert set(Counter(p["orderId"] for p in paid).values()) == {1}
            dls = _read_until(b, "order-created.dlq", declined)
            assert len(dls) == declined
            assert all(dict(d.headers)["x-delivery-count"] == b"1"
                       and dict(d.headers)["x-dead-letter-reason"] == b"rejected: card declined"
                       for d in dls)
            assert {p["orderId"] for p in paid} | {msgspec.json.decode(value(d))["orderId"]
                                                   for d in dls} == set(range(n))
            assert len(sent) == n - declined
            assert len(alerts) == declined and all(a["error"] == "Reject: card declined"
                                                   for a in alerts)
            assert b.committed_offsets("analytics", "order-created") == want
            assert f"analytics: {n} orders" in outs[2]
