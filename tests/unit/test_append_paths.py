"""Every way of appending to a topic applies the topic's retention.

Regression: delayed-message promotion and dead-letter redrive appended
without retention (they had their own copy of the append step).
"""

from __future__ import annotations

import time

import pytest

import mqlite

LIMIT = 5


def _retained(b: mqlite.Broker, topic: str) -> int:
    return b.describe_topic(topic).partitions[0].messages


def _fill_dlq(b: mqlite.Broker, n: int) -> None:
    b.create_topic("jobs")
    for i in range(n):
        b.send("jobs", b"j%d" % i)
    q = b.queue("jobs", "w", max_deliveries=1, dead_letter_topic="jobs.dlq")
    for d in q.receive(max_messages=n, timeout=1):
        d.nack()
    q.close()


@pytest.mark.parametrize("path", ["send", "send_batch", "producer", "publish", "delayed",
                                  "redrive"])
def test_retention_messages_holds_on_every_append_path(tmp_broker_dir, path):
    n = 3 * LIMIT
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("t", retention_messages=LIMIT)
        if path == "send":
            for i in range(n):
                b.send("t", b"%d" % i)
        elif path == "send_batch":
            for i in range(n):
                b.send_batch("t", [b"%d" % i])
        elif path == "producer":
            with b.producer() as p:
                for i in range(n):
                    p.send("t", b"%d" % i).result()
        elif path == "publish":
            b.declare_exchange("fx", "fanout")
            b.bind("fx", "t")
            for i in range(n):
                b.publish("fx", "", b"%d" % i)
        elif path == "delayed":
            for i in range(n):
                b.send("t", b"%d" % i, delay=0.01)
            time.sleep(0.05)
            b.promote_scheduled()
        else:
            _fill_dlq(b, n)
            assert b.redrive("jobs.dlq", to_topic="t") == n
        desc = b.describe_topic("t").partitions[0]
        assert desc.end_offset == n
        assert _retained(b, "t") <= LIMIT
