"""Issue 10, defects 10 and 11: hostile numbers get typed errors; closing a broker frees fds.

Every one of these used to escape as ``OverflowError``, ``struct.error``,
``AttributeError`` or a raw ``NotADirectoryError``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import mqlite

HUGE = 2**64
INF = float("inf")


def _calls(b: mqlite.Broker, d: Path) -> dict[str, Callable[[], object]]:
    q = b.queue("t", "w")
    b.send("t", b"x")
    (delivery,) = q.receive(1, timeout=5)
    return {
        "open map_size": lambda: mqlite.open(d / "other", map_size=HUGE),
        "retention_ms": lambda: b.create_topic("u", retention_ms=HUGE),
        "retention_bytes": lambda: b.create_topic("u", retention_bytes=HUGE),
        "dedup_window_ms": lambda: b.create_topic("u", dedup_window_ms=HUGE),
        "read offset": lambda: b.read("t", 0, HUGE),
        "send timestamp": lambda: b.send("t", b"x", timestamp_ms=HUGE),
        "send_batch timestamp": lambda: b.send_batch("t", [b"x"], timestamp_ms=HUGE),
        "visibility_timeout inf": lambda: b.queue("t", "w2", visibility_timeout=INF),
        "session_timeout inf": lambda: b.consumer("t", group="g", session_timeout=INF),
        "linger_ms inf": lambda: b.producer(linger_ms=INF),
        "claim ttl inf": lambda: b.claim("e", ttl=INF),
        "receive visibility 1e300": lambda: q.receive(1, timeout=0, visibility_timeout=1e300),
        "nack delay 1e300": lambda: delivery.nack(delay=1e300),
        "extend 1e300": lambda: delivery.extend(1e300),
        "delay inf": lambda: b.send("t", b"x", delay=INF),
        "deliver_at 1e300": lambda: b.send("t", b"x", deliver_at=1e300),
    }


def test_hostile_numbers_raise_value_or_type_errors(tmp_broker_dir: Path) -> None:
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("t")
        for name, call in _calls(b, tmp_broker_dir.parent).items():
            with pytest.raises((ValueError, TypeError)) as info:
                call()
            assert not isinstance(info.value, OverflowError), name
        with pytest.raises(TypeError, match="group"):
            b.committed_offsets(None, "t")  # type: ignore[arg-type]


def test_members_path_that_is_a_file_is_a_typed_error(tmp_broker_dir: Path) -> None:
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("t")
    members = tmp_broker_dir / "members"
    if members.is_dir():
        for f in members.iterdir():
            f.unlink()
        members.rmdir()
    members.write_bytes(b"")
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        with pytest.raises(mqlite.GroupError, match="not a directory"):
            b.consumer("t", group="g")
        with pytest.raises(mqlite.GroupError, match="not a directory"):
            b.queue("t", "w")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_closing_only_the_broker_frees_every_consumer_lock(
        tmp_broker_dir: Path, run_python: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    """Counted in a fresh interpreter: the pytest process's own descriptors vary with the
    tests that ran before."""
    proc = run_python(f"""
import os, threading, mqlite
path = {str(tmp_broker_dir)!r}
def settle():
    # watcher threads close their probers' descriptors as they exit: wait for them
    for t in threading.enumerate():
        if t is not threading.main_thread():
            t.join(30)
with mqlite.open(path, durability="none") as b:
    b.create_topic("t")
def cycle():
    b = mqlite.open(path, durability="none")
    b.consumer("t", group="g").poll(timeout=0)
    b.queue("t", "w").receive(1, timeout=0)
    b.close()  # the consumer and the queue are never closed by hand
cycle()
settle()
before = len(os.listdir("/proc/self/fd"))
for _ in range(10):
    cycle()
settle()
print(before, len(os.listdir("/proc/self/fd")))
print(sorted(os.listdir(os.path.join(path, "members"))))
""")
    assert proc.returncode == 0, proc.stderr
    counts, locks = proc.stdout.strip().splitlines()
    before, after = map(int, counts.split())
    assert after <= before
    assert locks == "[]"  # lock files removed too


def test_max_deliveries_beyond_a_u32_is_a_value_error(broker: mqlite.Broker) -> None:
    """Fuzz finding F3: ``max_deliveries=2**64`` raised OverflowError from the codec."""
    broker.create_topic("t")
    with pytest.raises(ValueError, match="max_deliveries"):
        broker.queue("t", "g", max_deliveries=2**64)
    with pytest.raises(ValueError, match="max_deliveries"):
        broker.set_queue_policy("t", "g", max_deliveries=2**32)


@pytest.mark.parametrize("op", ["nack", "extend", "dead_letter"])
def test_settling_an_acked_delivery_beside_a_pending_one_is_stale(
        broker: mqlite.Broker, op: str) -> None:
    """Fuzz finding F4: nack/extend of an acked delivery whose receive also handed out a
    still-pending one raised IndexError; it is a StaleDeliveryError changing nothing."""
    broker.create_topic("t")
    broker.send("t", b"a")
    broker.send("t", b"b")
    with broker.queue("t", "g") as q:
        d0, d1 = q.receive(2, timeout=1)
        q.ack(d0)
        with pytest.raises(mqlite.StaleDeliveryError):
            if op == "extend":
                q.extend(d0, 10)
            else:
                getattr(q, op)(d0)
        assert q.ack(d1) == 1  # the other delivery is untouched


def test_visibility_zero_makes_a_message_visible_at_once(broker: mqlite.Broker) -> None:
    """Issue 10 anchor (SQS): ``extend(0)`` is ChangeMessageVisibility 0, and a receive or a
    queue with ``visibility_timeout=0`` leaves what it hands out visible to others."""
    broker.create_topic("t")
    broker.send("t", b"a")
    with broker.queue("t", "g") as q1, broker.queue("t", "g") as q2:
        (held,) = q1.receive(1, timeout=1)
        assert q2.receive(1, timeout=0) == []
        held.extend(0)
        (again,) = q2.receive(1, timeout=1)
        assert (again.value, again.delivery_count) == (b"a", 2)
        with pytest.raises(mqlite.StaleDeliveryError):
            held.ack()
        again.ack()
        broker.send("t", b"b")
        q1.receive(1, timeout=1, visibility_timeout=0)
        assert [d.value for d in q2.receive(1, timeout=1)] == [b"b"]
    with broker.queue("t", "h", visibility_timeout=0) as q3:
        assert q3.visibility_timeout_ms == 0
