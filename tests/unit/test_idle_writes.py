"""Consumers with nothing new to commit write nothing (issue 14, part 3).

Every write transaction is an fsync under ``"sync"`` and takes the one LMDB
write lock that producers need, so a consumer's idle polls, its heartbeats and
a ``commit()`` of offsets it already committed must not write.  LMDB's last
transaction id is the witness: it moves with every committed write, from any
process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import mqlite
from mqlite import CommitFailedError, TopicPartition
from mqlite.groups import apply_verdicts


@pytest.fixture
def broker(tmp_broker_dir: Path) -> Iterator[mqlite.Broker]:
    b = mqlite.open(tmp_broker_dir, durability="none")
    b.create_topic("t", partitions=2)
    yield b
    b.close()


def last_txn(b: mqlite.Broker) -> int:
    return int(b._engine.env.lmdb.info()["last_txnid"])


@pytest.mark.parametrize("policy", ["after", "before", "manual"])
def test_idle_group_polls_write_nothing(broker: mqlite.Broker, policy: str) -> None:
    c = broker.consumer("t", group="g", commit=policy)
    broker.send("t", b"a", partition=0)
    got: list[mqlite.Message] = []
    while not got:
        got = c.poll(timeout=0.5)
    c.poll(timeout=0.01)  # "after": the first poll's positions are committed here
    if policy == "manual":
        c.commit()
    before = last_txn(broker)
    for _ in range(20):
        assert c.poll(timeout=0.001) == []
        c._group._heartbeat()
    if policy == "manual":
        c.commit()  # the same positions again: nothing new
    assert last_txn(broker) == before
    c.close()


def test_commit_of_unchanged_offsets_writes_nothing_but_stays_fenced(
        broker: mqlite.Broker) -> None:
    c = broker.consumer("t", group="g", commit="manual")
    broker.send("t", b"a", partition=0)
    while not c.poll(timeout=0.5):
        pass
    tp0 = TopicPartition("t", 0)
    c.commit()  # every owned position, tp0 at 1
    before = last_txn(broker)
    c.commit({tp0: 1})
    c.commit()
    assert last_txn(broker) == before
    assert c.committed(tp0) == 1
    # Removed from the group behind its back: the no-op commit still reports it.
    member = c._group.member_id
    assert member is not None
    lock = c._group._lock_name
    assert apply_verdicts(broker._engine, "g", {member: (lock, "expired")})
    with pytest.raises(CommitFailedError):
        c.commit({tp0: 1})
    c.close()


def test_new_offsets_are_still_written(broker: mqlite.Broker) -> None:
    c = broker.consumer("t", group="g", commit="manual")
    broker.send_batch("t", [b"a", b"b"], partition=0)
    while not c.poll(timeout=0.5):
        pass
    tp0 = TopicPartition("t", 0)
    c.commit({tp0: 1})
    before = last_txn(broker)
    c.commit({tp0: 2})
    assert last_txn(broker) == before + 1
    assert c.committed(tp0) == 2
    c.close()


def test_idle_queue_receive_writes_nothing(broker: mqlite.Broker) -> None:
    q = broker.queue("t", group="q")
    broker.send("t", b"a")
    ds: list[mqlite.Delivery] = []
    while not ds:
        ds = q.receive(10, timeout=0.5)
    q.ack(ds)
    before = last_txn(broker)
    for _ in range(20):
        assert q.receive(10, timeout=0.001) == []
    assert last_txn(broker) == before
    q.close()
