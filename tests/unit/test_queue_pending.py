"""Broker.queue_pending(): a queue group's unsettled messages read without joining it
(the web console's queue page), checked against Queue.pending()."""

from __future__ import annotations

import pytest

import mqlite


def _last_txnid(b: mqlite.Broker) -> int:
    return b._engine.env.handle().info()["last_txnid"]


def test_queue_pending_matches_queue_and_changes_nothing(broker: mqlite.Broker) -> None:
    broker.create_topic("jobs", partitions=2)
    for i in range(10):
        broker.send("jobs", b"j%d" % i, partition=i % 2)
    q = broker.queue("jobs", "workers", visibility_timeout=300, max_deliveries=5)
    held = q.receive(max_messages=4, timeout=5)
    assert len(held) == 4
    q.nack(held[:1], delay=600, error="boom")
    q.ack(held[1:2])
    expected = q.pending()
    before = _last_txnid(broker)
    got = broker.queue_pending("jobs", "workers")
    assert _last_txnid(broker) == before  # read-only: no write transaction
    assert got == expected
    assert len(got) == 3
    assert {p["owner"] for p in got if p["last_error"] is None} == {q.owner_id}
    nacked = [p for p in got if p["last_error"] == "boom"]
    assert len(nacked) == 1 and nacked[0]["delivery_count"] == 1
    assert broker.queue_pending("jobs", "workers", limit=2) == expected[:2]
    assert broker.queue_pending("jobs", "nobody") == []
    q.close()


def test_queue_pending_rejects_bad_input(broker: mqlite.Broker) -> None:
    broker.create_topic("jobs")
    with pytest.raises(ValueError, match="limit"):
        broker.queue_pending("jobs", "g", limit=0)
    with pytest.raises(ValueError, match="limit"):
        broker.queue_pending("jobs", "g", limit=True)
    with pytest.raises(mqlite.TopicNotFoundError):
        broker.queue_pending("nope", "g")
