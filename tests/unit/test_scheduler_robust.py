"""Issue 10, defect 1: one bad delayed send must not stop every consumer of the broker.

The delayed path validates exactly as the direct one (``dedup_id=""`` used to be
accepted with ``delay=`` and, once due, made every ``poll()``, ``receive()`` and
``promote_scheduled()`` of every process raise).  And promotion is robust: a stored
message that cannot be promoted is set aside (never due again, reason kept, reported
by ``mqlite verify``), and the messages behind it are promoted.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

import mqlite
from mqlite._storage import schedule as _schedule
from mqlite.verify import verify


@pytest.mark.parametrize(("dedup_id", "error"), [
    ("", ValueError), (b"", ValueError), ("x" * 300, ValueError),
    (5, TypeError), ([1, 2], TypeError), (3.5, TypeError),
])
def test_delayed_send_validates_dedup_id_like_a_direct_send(
        broker: mqlite.Broker, dedup_id: object, error: type[Exception]) -> None:
    broker.create_topic("orders")
    with pytest.raises(error):
        broker.send("orders", b"v", dedup_id=dedup_id)  # type: ignore[arg-type]
    with pytest.raises(error):
        broker.send("orders", b"v", dedup_id=dedup_id, delay=0.05)  # type: ignore[arg-type]
    assert broker.promote_scheduled() == 0


def _plant(b: mqlite.Broker, value: bytes, due_ms: int) -> None:
    """Store a scheduled record as a damaged file or an older version might hold it."""
    eng = b._engine
    with eng.write() as txn:
        _schedule.put(txn, eng.env.dbs, due_ms, value)


def test_unpromotable_messages_are_set_aside_and_do_not_block_others(
        tmp_broker_dir: Path) -> None:
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("orders")
        due = time.time_ns() // 1_000_000 - 1000
        # a bad dedup id as older versions stored it, and bytes that are not a message
        bad = msgspec.msgpack.encode(["orders", -1, None, b"bad", None, -1, b""])
        _plant(b, bad, due)
        _plant(b, b"\xc1 not msgpack", due)
        b.send("orders", b"good", deliver_at=time.time() - 1)
        assert b.promote_scheduled() == 3  # all three left the due queue
        assert [m.value for m in b.read("orders")] == [b"good"]
        c = b.consumer("orders", group="g")
        assert [m.value for m in c.poll(10, timeout=1)] == [b"good"]  # no ValueError
        c.close()
        with b.queue("orders", "w") as q:
            assert [d.value for d in q.receive(10, timeout=1)] == [b"good"]
        assert b.promote_scheduled() == 0  # set aside for good: never due again
        eng = b._engine
        with eng.read() as txn:
            aside = _schedule.set_aside_entries(txn, eng.env.dbs)
            assert _schedule.next_due(txn, eng.env.dbs) is None
    assert [raw for _, raw in aside] == [bad, b"\xc1 not msgpack"]
    assert "dedup_id must be 1-256 bytes" in aside[0][0]
    report = verify(str(tmp_broker_dir))
    assert sum("set aside" in p.message for p in report.problems) == 2


def test_set_aside_survives_reopen_and_other_processes_keep_consuming(
        tmp_broker_dir: Path, run_python: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("orders")
        _plant(b, b"\xc1", time.time_ns() // 1_000_000 - 1000)
        b.send("orders", b"after", deliver_at=time.time() - 1)
    proc = run_python(f"""
import mqlite
with mqlite.open({str(tmp_broker_dir)!r}, durability="none") as b:
    c = b.consumer("orders", group="g")
    print([m.value for m in c.poll(10, timeout=5)])
    c.close()
""")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[b'after']"


def test_keyless_round_robin_is_per_topic(broker: mqlite.Broker) -> None:
    """Issue 10, defect 8: alternating keyless sends to two topics spread over each."""
    broker.create_topic("a", partitions=2)
    broker.create_topic("b", partitions=2)
    for _ in range(10):
        broker.send("a", b"x")
        broker.send("b", b"y")
        broker.send_batch("a", [b"x"])
        broker.send_batch("b", [b"y"])
    with broker.producer() as p:
        for _ in range(10):
            p.send("a", b"x")
            p.send("b", b"y")
    for t in ("a", "b"):
        assert [part.messages for part in broker.describe_topic(t).partitions] == [15, 15]
