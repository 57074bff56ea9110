"""Idempotent sends (``dedup_id``) and delayed messages (``delay=`` / ``deliver_at=``)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import mqlite


def _txnid(b: mqlite.Broker) -> int:
    return b._engine.env.handle().info()["last_txnid"]


def _count(b: mqlite.Broker, topic: str = "t") -> int:
    return b.describe_topic(topic).messages


# -- dedup -------------------------------------------------------------------------------------


def test_repeat_within_window_appends_nothing(broker: mqlite.Broker) -> None:
    broker.create_topic("t", partitions=3)
    first = broker.send("t", b"v1", key=b"k", dedup_id="order-1")
    before = _txnid(broker)
    again = broker.send("t", b"other value", key=b"other", dedup_id="order-1")
    assert again == first  # the first send's metadata, even with other arguments
    assert _txnid(broker) == before  # nothing committed
    assert broker.send("t", b"v1", dedup_id=b"order-1") == first  # str and its UTF-8 agree
    assert _count(broker) == 1
    second = broker.send("t", b"v2", key=b"k", dedup_id="order-2")
    assert second.offset == first.offset + 1
    assert _count(broker) == 2
    (m,) = [m for m in broker.consumer("t").poll(timeout=0) if m.offset == first.offset]
    assert m.value == b"v1"


def test_dedup_ids_are_per_topic(broker: mqlite.Broker) -> None:
    broker.create_topic("a")
    broker.create_topic("b")
    ma = broker.send("a", b"x", dedup_id="same")
    mb = broker.send("b", b"x", dedup_id="same")
    assert (ma.topic, mb.topic) == ("a", "b")
    assert _count(broker, "a") == 1 and _count(broker, "b") == 1


def test_producer_dedup_in_one_flush_and_across_flushes(broker: mqlite.Broker) -> None:
    broker.create_topic("t", partitions=2)
    with broker.producer(linger_ms=100) as p:
        f1 = p.send("t", b"a", dedup_id="x")
        f2 = p.send("t", b"b", dedup_id="x")  # same transaction
        f3 = p.send("t", b"c", dedup_id="y")
        p.flush()
        f4 = p.send("t", b"d", dedup_id="x")  # later transaction
    assert f1.result() == f2.result() == f4.result()
    assert f3.result() != f1.result()
    assert _count(broker) == 2
    # broker.send and producers share the dedup record
    assert broker.send("t", b"e", dedup_id="y") == f3.result()


def test_dedup_survives_reopen(tmp_broker_dir: Path) -> None:
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("t")
        first = b.send("t", b"v", dedup_id="persisted")
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        assert b.send("t", b"v", dedup_id="persisted") == first
        assert _count(b) == 1


def test_dedup_across_processes(tmp_broker_dir: Path,
                                run_python: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    with mqlite.open(tmp_broker_dir) as b:
        b.create_topic("t", partitions=4)
        first = b.send("t", b"v", key=b"k", dedup_id="cross-process")
        code = ("import sys, mqlite\n"
                "with mqlite.open(sys.argv[1]) as b:\n"
                "    md = b.send('t', b'again', dedup_id='cross-process')\n"
                "    print(md.partition, md.offset, md.timestamp_ms)\n")
        res = run_python(code, str(tmp_broker_dir))
        assert res.returncode == 0, res.stderr
        assert res.stdout.split() == [str(first.partition), str(first.offset),
                                      str(first.timestamp_ms)]
        assert _count(b) == 1


def test_repeat_after_window_appends_again(broker: mqlite.Broker) -> None:
    broker.create_topic("t", dedup_window_ms=1000)
    first = broker.send("t", b"v", dedup_id="w")
    assert broker.send("t", b"v", dedup_id="w") == first
    time.sleep(1.1)
    second = broker.send("t", b"v", dedup_id="w")
    assert second.offset == first.offset + 1
    assert broker.send("t", b"v", dedup_id="w") == second  # a new window began
    assert _count(broker) == 2


def test_producer_repeat_after_window_appends_again(broker: mqlite.Broker) -> None:
    broker.create_topic("t", dedup_window_ms=1000)
    with broker.producer(linger_ms=0) as p:
        first = p.send("t", b"v", dedup_id="w").result()
        assert p.send("t", b"v", dedup_id="w").result() == first
        time.sleep(1.1)
        assert p.send("t", b"v", dedup_id="w").result().offset == first.offset + 1


def test_dedup_window_is_wall_clock_not_record_timestamp(broker: mqlite.Broker) -> None:
    broker.create_topic("t", dedup_window_ms=1000)
    old, future = 1_000, time.time_ns() // 1_000_000 + 3_600_000
    a = broker.send("t", b"v", dedup_id="old", timestamp_ms=old)
    f = broker.send("t", b"v", dedup_id="future", timestamp_ms=future)
    assert broker.send("t", b"v", dedup_id="future", timestamp_ms=future) == f
    time.sleep(1.1)
    assert broker.send("t", b"v", dedup_id="old", timestamp_ms=old).offset > a.offset
    assert _count(broker) == 3


def test_default_dedup_window_is_two_minutes(broker: mqlite.Broker) -> None:
    broker.create_topic("t")
    assert broker.topic_config("t").dedup_window_ms == 120_000


def test_many_dedup_ids_expire_and_are_forgotten(broker: mqlite.Broker) -> None:
    broker.create_topic("t", dedup_window_ms=50)
    for i in range(100):
        broker.send("t", b"v", dedup_id=f"id-{i}")
    time.sleep(0.1)
    for i in range(100):  # all expired: each appends again
        broker.send("t", b"v", dedup_id=f"id-{i}")
    assert _count(broker) == 200
    with broker._engine.env.read_txn() as txn:
        left = txn.stat(broker._engine.env.dbs["dedup"])["entries"]
    assert left < 400  # expired ids are swept as new ones are stored


# -- delayed messages ----------------------------------------------------------------------------


def test_delayed_message_is_invisible_until_due(broker: mqlite.Broker) -> None:
    broker.create_topic("t")
    c = broker.consumer("t")
    t0 = time.monotonic()
    md = broker.send("t", b"later", delay=1.0)  # room for a stall before the checks below
    assert (md.topic, md.offset) == ("t", -1)
    assert c.poll(timeout=0) == []
    assert broker.read("t") == []
    assert broker.describe_topic("t").messages == 0
    got = c.poll(timeout=30)  # waits for the due time, then gets it
    elapsed = time.monotonic() - t0
    assert [m.value for m in got] == [b"later"]
    # not before due; woken when due, not at the 30 s timeout (load delays wake-ups)
    assert 0.98 <= elapsed < 10.0, elapsed


def test_deliver_at(broker: mqlite.Broker) -> None:
    broker.create_topic("t")
    c = broker.consumer("t")
    t0 = time.monotonic()
    broker.send("t", b"at", deliver_at=time.time() + 1.0)  # 0.9 s of room for a stall
    assert c.poll(timeout=0.1) == []  # a short poll does not wait for the due time
    assert time.monotonic() - t0 < 0.98
    assert [m.value for m in c.poll(timeout=30)] == [b"at"]
    # not before due; woken when due, not at the 30 s timeout (load delays wake-ups)
    assert 0.98 <= time.monotonic() - t0 < 10.0


def test_delayed_messages_arrive_in_due_order(broker: mqlite.Broker) -> None:
    broker.create_topic("t")
    for delay, v in [(0.35, b"c"), (0.05, b"a"), (0.2, b"b")]:
        broker.send("t", v, delay=delay)
    broker.send("t", b"now")
    c = broker.consumer("t")
    got: list[bytes | None] = []
    deadline = time.monotonic() + 5
    while len(got) < 4 and time.monotonic() < deadline:
        got += [m.value for m in c.poll(timeout=1)]
    assert got == [b"now", b"a", b"b", b"c"]


def test_delayed_message_keeps_key_headers_partition(broker: mqlite.Broker) -> None:
    broker.create_topic("t", partitions=50)
    hdrs = [("h", b"1"), ("h", b"2")]
    broker.send("t", b"k", key=b"foobar", headers=hdrs, delay=0.05)
    md = broker.send("t", b"p", partition=7, timestamp_ms=12345, delay=0.05)
    assert md.partition == 7
    c = broker.consumer("t")
    got: list[mqlite.Message] = []
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        got += c.poll(timeout=1)
    by_value = {m.value: m for m in got}
    assert by_value[b"k"].partition == 16 and by_value[b"k"].key == b"foobar"
    assert by_value[b"k"].headers == hdrs
    assert by_value[b"p"].partition == 7 and by_value[b"p"].timestamp_ms == 12345


def test_delayed_message_survives_reopen(tmp_broker_dir: Path) -> None:
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("t")
        b.send("t", b"durable", delay=0.2)
    time.sleep(0.3)
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        assert [m.value for m in b.consumer("t").poll(timeout=2)] == [b"durable"]
        assert b.promote_scheduled() == 0  # promoted exactly once


def test_delayed_message_to_deleted_topic_is_dropped(broker: mqlite.Broker) -> None:
    broker.create_topic("t")
    broker.create_topic("other")
    broker.send("t", b"x", delay=0.05)
    broker.delete_topic("t")
    time.sleep(0.1)
    broker.promote_scheduled()
    broker.create_topic("t")
    assert broker.consumer(["t", "other"]).poll(timeout=0.1) == []


def test_delayed_message_with_dedup_id(broker: mqlite.Broker) -> None:
    broker.create_topic("t")
    broker.send("t", b"now", dedup_id="d1")
    broker.send("t", b"late-dup", dedup_id="d1", delay=0.05)
    broker.send("t", b"first", dedup_id="d2", delay=0.05)
    broker.send("t", b"second", dedup_id="d2", delay=0.06)
    time.sleep(0.1)
    broker.promote_scheduled()
    assert [m.value for m in broker.read("t")] == [b"now", b"first"]


@pytest.mark.parametrize("mode", ["sync", "none"])
def test_waiting_consumer_gets_delayed_message_soon_after_due(
        open_broker: Callable[..., mqlite.Broker], mode: str) -> None:
    b = open_broker(durability=mode)
    b.create_topic("t", partitions=3)
    c = b.consumer("t")
    assert c.poll(timeout=0) == []
    due = time.monotonic() + 0.3
    b.send("t", b"x", key=b"k", delay=0.3)
    got = c.poll(timeout=3)
    late = time.monotonic() - due
    assert [m.value for m in got] == [b"x"]
    assert -0.02 <= late < 0.5, late
