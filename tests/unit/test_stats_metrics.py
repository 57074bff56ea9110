"""Broker.stats() / queue_stats() and the Prometheus metrics built on them (issue 13).

Every figure is checked against the public API that computes it another way
(describe_topic, describe_group, dead_letters, receive), and the snapshot is
checked to change nothing: no group joined, no write transaction.
"""

from __future__ import annotations

import datetime as dt
import sys
import threading
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import mqlite
from mqlite.handler_metrics import HandlerMetrics
from mqlite.metrics import BrokerCollector, render, serve, stats_families


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _last_txnid(b: mqlite.Broker) -> int:
    return b._engine.env.handle().info()["last_txnid"]


@pytest.fixture
def busy(broker: mqlite.Broker) -> mqlite.Broker:
    """orders (3 partitions, 30 messages), a stream group with a live member that
    committed 10, a queue group with 3 in flight, 1 acked, 1 dead-lettered, 1 nacked
    with a delay; one delayed send."""
    b = broker
    b.create_topic("orders", 3)
    for i in range(30):
        b.send("orders", b"v%d" % i, key=b"k%d" % (i % 5))
    return b


def test_stats_match_the_api_and_change_nothing(busy: mqlite.Broker) -> None:
    b = busy
    c = b.consumer("orders", group="billing")
    assert len(c.poll(max_records=10, timeout=5.0)) == 10
    c.commit()
    q = b.queue("orders", "workers", max_deliveries=5, dead_letter_topic="orders.dlq",
                retry_backoff=60.0)
    got = q.receive(max_messages=6, timeout=5.0)
    assert len(got) == 6
    got[0].ack()
    got[1].dead_letter(reason="bad")
    got[2].nack()  # delayed 60 s by the backoff
    b.send("orders", b"later", delay=3600)

    gen = b.describe_group("billing").generation
    before = _last_txnid(b)
    s = b.stats()
    assert _last_txnid(b) == before  # read-only: no write transaction
    assert b.describe_group("billing").generation == gen  # nobody joined

    d = b.describe_topic("orders")
    mine = [p for p in s.partitions if p.topic == "orders"]
    assert [(p.start_offset, p.end_offset, p.bytes) for p in mine] == \
        [(p.start_offset, p.end_offset, p.bytes) for p in d.partitions]

    (g,) = s.groups
    assert g.group == "billing" and g.members == 1 and g.topics == ["orders"]
    want = {(p.partition.partition, p.committed, p.lag)
            for p in b.describe_group("billing").partitions}
    assert {(x.partition, x.committed, x.lag) for x in g.lag} == want
    assert g.total_lag == 20

    (qs,) = s.queues
    assert (qs.topic, qs.group, qs.consumers) == ("orders", "workers", 1)
    assert qs.inflight == 3 and qs.delayed == 1
    assert qs.ready == 30 - 6
    assert qs.consumed == 2  # one acked, one dead-lettered
    assert qs.dead_letter_topic == "orders.dlq" and qs.dead_letters == 1
    assert qs.max_deliveries == 5
    assert s.dead_letters == {"orders.dlq": len(b.dead_letters("orders.dlq"))} == \
        {"orders.dlq": 1}
    assert s.scheduled == {"orders": 1}
    assert qs.oldest_pending_ms is not None

    detail = b.queue_stats("orders", "workers")
    assert detail is not None and detail.ready == qs.ready
    assert detail.oldest_ready_timestamp_ms == min(
        m.timestamp_ms for p in range(3) for m in b.read("orders", p, 0, 100)
        if (p, m.offset) not in {(x.partition, x.offset) for x in got})
    assert b.queue_stats("orders", "nobody") is None
    with pytest.raises(mqlite.TopicNotFoundError):
        b.queue_stats("missing", "workers")
    with pytest.raises(ValueError):
        b.queue_stats("orders", "bad/group")

    # ready comes back when the consumer dies (its entries are released)
    q.close()
    c.close()
    s2 = b.stats()
    assert s2.queues[0].consumers == 0 and s2.groups[0].members == 0
    assert s2.queues[0].inflight == 0 and s2.queues[0].ready == 24 + 3


def test_dead_letter_depth_follows_redrive_and_purge(broker: mqlite.Broker) -> None:
    b = broker
    b.create_topic("jobs")
    b.send_batch("jobs", [b"a", b"b", b"c"])
    q = b.queue("jobs", "w", max_deliveries=1, dead_letter_topic="jobs.dlq")
    for d in q.receive(max_messages=3, timeout=5.0):
        d.dead_letter(reason="x")
    assert b.stats().dead_letters == {"jobs.dlq": 3}
    b.redrive("jobs.dlq", limit=1)
    assert b.stats().dead_letters == {"jobs.dlq": 2}
    b.purge_dead_letters("jobs.dlq")
    assert b.stats().dead_letters == {"jobs.dlq": 0}
    q.close()


def test_metrics_exposition_has_the_fixed_names_and_api_values(busy: mqlite.Broker) -> None:
    b = busy
    c = b.consumer("orders", group="billing")
    c.poll(max_records=7, timeout=5.0)
    c.commit()
    q = b.queue("orders", "workers", max_deliveries=1, dead_letter_topic="orders.dlq")
    got = q.receive(max_messages=4, timeout=5.0)
    got[0].dead_letter(reason="x")
    got[1].ack()
    b.send("orders", b"later", delay=3600)

    text = render(BrokerCollector(b).families(label_values=False)).decode()
    m = _samples(text)
    s = b.stats()
    for p in s.partitions:
        lv = (("partition", str(p.partition)), ("topic", p.topic))
        assert m[("mqlite_topic_partition_end_offset", lv)] == p.end_offset
        assert m[("mqlite_topic_partition_start_offset", lv)] == p.start_offset
        assert m[("mqlite_topic_partition_bytes", lv)] == p.bytes
    for gp in b.describe_group("billing").partitions:
        glv = (("group", "billing"), ("partition", str(gp.partition.partition)),
               ("topic", "orders"))
        assert m[("mqlite_consumer_group_lag", glv)] == gp.lag
    assert m[("mqlite_consumer_group_members", (("group", "billing"),))] == 1
    tg = (("group", "workers"), ("topic", "orders"))
    assert m[("mqlite_queue_messages_ready", tg)] == 30 - 4
    assert m[("mqlite_queue_messages_inflight", tg)] == 2
    assert m[("mqlite_queue_messages_scheduled", (("topic", "orders"),))] == 1
    assert m[("mqlite_dead_letter_messages", (("topic", "orders.dlq"),))] == 1
    assert m[("mqlite_messages_sent_total", (("topic", "orders"),))] == 30
    assert m[("mqlite_messages_consumed_total", (("group", "billing"), ("topic", "orders")))] \
        == 7
    assert m[("mqlite_messages_consumed_total", tg)] == 2

    # the generic prometheus_client path gives the same samples
    reg = CollectorRegistry()
    reg.register(BrokerCollector(b))
    generic = _samples(generate_latest(reg).decode())
    drop = {"mqlite_scrape_duration_seconds", "mqlite_queue_oldest_unacked_age_seconds"}
    assert {k: v for k, v in generic.items() if k[0] not in drop} == \
        {k: v for k, v in m.items() if k[0] not in drop}
    q.close()
    c.close()


def test_exposition_escapes_label_values() -> None:
    fams = stats_families(mqlite.BrokerStats(
        taken_ms=0, partitions=[mqlite.PartitionStats('a"b\\c\nd', 0, 0, 1, 2)], groups=[],
        queues=[], scheduled={}, dead_letters={}))
    m = _samples(render(fams).decode())
    assert m[("mqlite_topic_partition_end_offset",
              (("partition", "0"), ("topic", 'a"b\\c\nd')))] == 1


def test_serve_over_http_and_lag_changes_while_a_consumer_runs(busy: mqlite.Broker) -> None:
    b = busy
    reg = CollectorRegistry()
    hm = HandlerMetrics(reg)
    server, thread = serve(b, 0, registry=reg)
    url = f"http://127.0.0.1:{server.server_port}/metrics"

    def lag() -> float:
        with urllib.request.urlopen(url, timeout=30) as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            m = _samples(r.read().decode())
        return sum(v for (n, lv), v in m.items() if n == "mqlite_consumer_group_lag")

    try:
        c = b.consumer("orders", group="g")
        first = lag()
        assert first == 30
        consumed = threading.Event()

        def run() -> None:
            hm.started("pay", "orders")
            c.poll(max_records=12, timeout=5.0)
            c.commit()
            hm.finished("pay", "orders", "ok", 0.02)
            consumed.set()

        t = threading.Thread(target=run)
        t.start()
        assert consumed.wait(30)
        t.join()
        assert lag() == 18
        with urllib.request.urlopen(url, timeout=30) as r:
            m = _samples(r.read().decode())
        assert m[("mqlite_handler_messages_total",
                  (("handler", "pay"), ("status", "ok"), ("topic", "orders")))] == 1
        assert m[("mqlite_handler_duration_seconds_count",
                  (("handler", "pay"), ("topic", "orders")))] == 1
        assert m[("mqlite_handler_inflight", (("handler", "pay"),))] == 0
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(url.replace("/metrics", "/other"), timeout=30)
        c.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    with pytest.raises(ValueError):
        serve(b, 70000)


def test_handler_metrics_counts_and_validates() -> None:
    reg = CollectorRegistry()
    hm = HandlerMetrics(reg)
    assert hm.enabled
    assert HandlerMetrics(reg)._count is hm._count  # one set of metrics per registry
    for status in ("ok", "retry", "dead_letter", "error", "ok", "skipped"):
        hm.started("h", "t")
        hm.finished("h", "t", status, 0.0 if status == "skipped" else 0.5)
    m = _samples(generate_latest(reg).decode())
    assert m[("mqlite_handler_messages_total",
              (("handler", "h"), ("status", "ok"), ("topic", "t")))] == 2
    assert m[("mqlite_handler_messages_total",
              (("handler", "h"), ("status", "skipped"), ("topic", "t")))] == 1
    assert m[("mqlite_handler_duration_seconds_sum", (("handler", "h"), ("topic", "t")))] == 2.5
    assert m[("mqlite_handler_duration_seconds_count", (("handler", "h"), ("topic", "t")))] == 6
    assert m[("mqlite_handler_inflight", (("handler", "h"),))] == 0
    # calls of a worker that died: in-flight drops, nothing counted
    hm.started("h", "t")
    hm.started("h", "t")
    hm.abandoned("h", 2)
    m = _samples(generate_latest(reg).decode())
    assert m[("mqlite_handler_inflight", (("handler", "h"),))] == 0
    assert m[("mqlite_handler_duration_seconds_count", (("handler", "h"), ("topic", "t")))] == 6
    with pytest.raises(ValueError, match="count"):
        hm.abandoned("h", -1)
    with pytest.raises(ValueError, match="status"):
        hm.finished("h", "t", "okay", 0.1)
    with pytest.raises(TypeError):
        HandlerMetrics(reg, enabled="yes")  # type: ignore[arg-type]


def test_handler_metrics_are_no_ops_without_prometheus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import raises ImportError
    hm = HandlerMetrics()
    assert not hm.enabled
    hm.started("h", "t")
    hm.finished("h", "t", "anything", -1)  # not even validated: nothing is recorded
    off = HandlerMetrics(enabled=False)
    assert off.started is off.finished or off.started.__name__ == "_noop"
    with pytest.raises(ImportError, match=r"mqlite\[metrics\]"):
        BrokerCollector(None)  # type: ignore[arg-type]


def test_reset_offsets(busy: mqlite.Broker) -> None:
    b = busy
    c = b.consumer("orders", group="g")
    c.poll(max_records=30, timeout=5.0)
    c.commit()
    with pytest.raises(mqlite.GroupActiveError, match="force"):
        b.reset_offsets("g", "orders", "earliest")
    assert b.reset_offsets("g", "orders", 2, partitions=[0], force=True) == {0: 2}
    c.close()
    ends = {p.partition: p.end_offset for p in b.describe_topic("orders").partitions}
    assert b.reset_offsets("g", "orders", "earliest") == {0: 0, 1: 0, 2: 0}
    assert b.reset_offsets("g", "orders", "latest") == ends
    assert b.reset_offsets("g", "orders", 10**9) == ends  # clamped
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    assert b.reset_offsets("g", "orders", future) == ends
    past = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    assert b.reset_offsets("g", "orders", past) == {0: 0, 1: 0, 2: 0}
    assert b.committed_offsets("g", "orders") == {0: 0, 1: 0, 2: 0}
    c2 = b.consumer("orders", group="g")
    assert len(c2.poll(max_records=100, timeout=5.0)) == 30  # reads again from the reset
    c2.close()
    # a group that never had members is created and listed
    assert b.reset_offsets("fresh", "orders", "latest") == ends
    assert "fresh" in b.groups() and [g.group for g in b.stats().groups] == ["fresh", "g"]
    for bad, exc in (("first", ValueError), (-1, ValueError), (True, TypeError),
                     (dt.datetime(2000, 1, 1), ValueError), (1.5, TypeError)):
        with pytest.raises(exc):
            b.reset_offsets("g", "orders", bad)
    with pytest.raises(mqlite.PartitionNotFoundError):
        b.reset_offsets("g", "orders", "earliest", partitions=[3])
    with pytest.raises(mqlite.TopicNotFoundError):
        b.reset_offsets("g", "missing", "earliest")


def test_alter_topic(busy: mqlite.Broker) -> None:
    b = busy
    cfg = b.alter_topic("orders", retention_ms=3_600_000)
    assert cfg.retention_ms == 3_600_000 and cfg.partitions == 3
    assert b.topic_config("orders").retention_ms == 3_600_000
    cfg = b.alter_topic("orders", partitions=5, retention_bytes=1 << 20)
    assert cfg.partitions == 5 and cfg.retention_bytes == 1 << 20
    assert cfg.retention_ms == 3_600_000  # left out: unchanged
    d = b.describe_topic("orders")
    assert [p.messages for p in d.partitions][3:] == [0, 0]
    assert sum(p.messages for p in d.partitions) == 30
    assert b.send("orders", b"x", partition=4).offset == 0
    assert b.alter_topic("orders", retention_ms=None).retention_ms is None
    with pytest.raises(ValueError, match="only be added"):
        b.alter_topic("orders", partitions=2)
    with pytest.raises(ValueError):
        b.alter_topic("orders", retention_ms=0)
    with pytest.raises(TypeError):
        b.alter_topic("orders", retention_ms="1")  # type: ignore[arg-type]
    with pytest.raises(mqlite.TopicNotFoundError):
        b.alter_topic("missing", retention_ms=1)
    # a queue consumer sees the new partitions at once
    q = b.queue("orders", "w")
    got = q.receive(max_messages=100, timeout=5.0)
    assert {(d.partition, d.offset) for d in got} >= {(4, 0)}
    q.close()


def test_cached_exposition_follows_changes(busy: mqlite.Broker) -> None:
    b = busy
    col = BrokerCollector(b)
    c = b.consumer("orders", group="g")
    c.poll(max_records=5, timeout=5.0)
    c.commit()

    def fresh() -> dict:
        return _samples(render(BrokerCollector(b).families(label_values=False)).decode())

    def cached() -> dict:
        m = _samples(col.exposition().decode())
        m.pop(("mqlite_scrape_duration_seconds", ()))
        return m

    for change in (lambda: None, lambda: b.send("orders", b"more"),
                   lambda: b.create_topic("new", 2), lambda: b.delete_topic("new"),
                   lambda: b.reset_offsets("other", "orders", "earliest")):
        change()
        want = fresh()
        want.pop(("mqlite_scrape_duration_seconds", ()))
        assert cached() == want
        assert cached() == want  # the second call reuses every cached label text
    c.close()
