"""A stream consumer does not carry positions across a topic's deletion and re-creation (D91).

A partition id is never reused, so a re-created topic's partitions are new logs that
start empty.  A consumer (plain or group member, sync or ``mqlite.aio``) that outlives
a delete + create between two of its calls must read the new partition from where
``auto_offset_reset`` says (the group has no committed offset there), never from the
old partition's position; and a commit of an offset read from the old partition must
raise ``CommitFailedError`` (automatic commits drop it) and write nothing onto the new
partition.  Kafka: OFFSET_OUT_OF_RANGE + ``auto.offset.reset``, CommitFailedException.
The cross-process case is in tests/integration/test_topic_recreate_procs.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

import pytest

import mqlite
import mqlite.aio
from mqlite import TopicPartition as TP

TP0 = TP("t", 0)


def _recreate(b: mqlite.Broker, new: int = 3) -> None:
    """Delete and create ``t`` again, then send ``new`` messages to its partition 0."""
    b.delete_topic("t")
    b.create_topic("t")
    b.send_batch("t", [b"new%d" % i for i in range(new)], partition=0)


def _read_old(b: mqlite.Broker, c: mqlite.Consumer) -> list[mqlite.Message]:
    """Send two messages to ``t`` and let ``c`` read them (its position is then 2)."""
    b.create_topic("t")
    b.send_batch("t", [b"old0", b"old1"], partition=0)
    got = c.poll(timeout=5)
    assert [m.offset for m in got] == [0, 1]
    return got


def _offsets(msgs: list[mqlite.Message]) -> list[tuple[int, bytes | None]]:
    return [(m.offset, m.value) for m in msgs]


NEW = [(0, b"new0"), (1, b"new1"), (2, b"new2")]


@pytest.mark.parametrize("kind", ["assigned", "group"])
def test_a_poll_reads_the_recreated_partition_from_its_start(
        broker: mqlite.Broker, kind: str) -> None:
    broker.create_topic("t")
    c = _consumer(broker, kind)
    broker.delete_topic("t")
    with c:
        _read_old(broker, c)
        _recreate(broker)
        assert _offsets(c.poll(timeout=5)) == NEW
        assert c.position(TP0) == 3


@pytest.mark.parametrize("kind", ["assigned", "group"])
def test_position_and_lag_after_the_recreation_are_of_the_new_partition(
        broker: mqlite.Broker, kind: str) -> None:
    broker.create_topic("t")
    c = _consumer(broker, kind)
    with c:
        broker.send_batch("t", [b"old0", b"old1"], partition=0)
        assert len(c.poll(timeout=5)) == 2
        _recreate(broker)
        assert c.position(TP0) == 0
        assert c.lag() == {TP0: 3}
        assert _offsets(c.poll(timeout=5)) == NEW


def _assigned_now(b: mqlite.Broker) -> mqlite.Consumer:
    c = b.consumer(None)
    c.assign([TP0])
    return c


def _consumer(b: mqlite.Broker, kind: str) -> mqlite.Consumer:
    """An ``"assigned"`` consumer of t[0], or a ``"group"`` member of group g."""
    return _assigned_now(b) if kind == "assigned" else b.consumer("t", group="g",
                                                                   commit="manual")


@pytest.mark.parametrize("reset, expect", [("latest", 3), ("none", None)])
def test_the_new_partition_is_reset_by_auto_offset_reset(
        broker: mqlite.Broker, reset: str, expect: int | None) -> None:
    broker.create_topic("t")
    with broker.consumer("t", group="g", commit="manual", auto_offset_reset=reset) as c:
        with contextlib.suppress(mqlite.OffsetOutOfRangeError):  # "none": nothing committed
            assert c.poll(timeout=0) == []  # joins and owns t[0]
        c.seek(TP0, 0)
        broker.send_batch("t", [b"old0", b"old1"], partition=0)
        assert len(c.poll(timeout=5)) == 2
        _recreate(broker)
        if expect is None:
            with pytest.raises(mqlite.OffsetOutOfRangeError):
                c.poll(timeout=0)
        else:
            assert c.poll(timeout=0) == []
            assert c.position(TP0) == expect


@pytest.mark.parametrize("seek_after, expect", [(False, NEW), (True, NEW[1:])],
                         ids=["before-belongs-to-the-old-partition",
                              "after-applies-to-the-new-partition"])
def test_a_seek_is_of_the_partition_it_was_made_on(
        broker: mqlite.Broker, seek_after: bool, expect: list[tuple[int, bytes]]) -> None:
    broker.create_topic("t")
    with _assigned_now(broker) as c:
        broker.send_batch("t", [b"old0", b"old1"], partition=0)
        assert len(c.poll(timeout=5)) == 2
        if not seek_after:
            c.seek(TP0, 1)
        _recreate(broker)
        if seek_after:
            c.seek(TP0, 1)
        assert _offsets(c.poll(timeout=5)) == expect


def test_a_batch_read_ahead_of_the_old_position_is_not_returned(broker: mqlite.Broker) -> None:
    broker.create_topic("t")
    with _assigned_now(broker) as c:
        broker.send_batch("t", [b"old0", b"old1"], partition=0)
        assert len(c.poll(timeout=5)) == 2
        _recreate(broker)
        c.read_ahead()
        assert _offsets(c.poll(timeout=5)) == NEW


COMMITS: dict[str, Callable[[mqlite.Consumer, list[mqlite.Message]], object]] = {
    "positions": lambda c, old: c.commit(),
    "message": lambda c, old: c.commit(old[-1]),
    "mapping": lambda c, old: c.commit({TP0: 2}),
}


@pytest.mark.parametrize("durability", ["none", "lazy"])  # "lazy": through the commit ring
@pytest.mark.parametrize("how", sorted(COMMITS))
def test_a_commit_of_the_old_partition_fails_and_writes_nothing_onto_the_new_one(
        open_broker: Callable[..., mqlite.Broker], durability: str, how: str) -> None:
    b = open_broker(durability=durability)
    b.create_topic("t")
    with b.consumer("t", group="g", commit="manual") as c:
        b.delete_topic("t")
        old = _read_old(b, c)
        _recreate(b)
        with pytest.raises(mqlite.CommitFailedError, match="created again"):
            COMMITS[how](c, old)
        assert c.committed(TP0) is None
        assert _offsets(c.poll(timeout=5)) == NEW
        c.commit()
        assert c.committed(TP0) == 3


@pytest.mark.parametrize("durability", ["none", "lazy"])
@pytest.mark.parametrize("policy", ["after", "before"])
def test_an_automatic_commit_of_the_old_partition_is_dropped(
        open_broker: Callable[..., mqlite.Broker], durability: str, policy: str) -> None:
    b = open_broker(durability=durability)
    b.create_topic("t")
    with b.consumer("t", group="g", commit=policy) as c:
        b.delete_topic("t")
        _read_old(b, c)
        _recreate(b)
        assert _offsets(c.poll(timeout=5)) == NEW  # its "after" commit of old offset 2: dropped
        # "before" committed 3 with the poll; "after" has committed nothing of the new one
        assert c.committed(TP0) == (3 if policy == "before" else None)
        assert c.poll(timeout=0) == []
        assert c.committed(TP0) == 3


def test_a_transaction_commit_of_the_old_partition_aborts(broker: mqlite.Broker) -> None:
    broker.create_topic("t")
    with broker.consumer("t", group="g", commit="manual") as c:
        broker.delete_topic("t")
        _read_old(broker, c)
        _recreate(broker)
        with pytest.raises(mqlite.CommitFailedError), broker.transaction() as tx:
            tx.commit_offsets(c)
        assert c.committed(TP0) is None


def test_an_async_consumer_follows_the_recreation(tmp_broker_dir: Path) -> None:
    async def main() -> None:
        async with mqlite.aio.open(tmp_broker_dir, durability="none") as b:
            await b.create_topic("t")
            c = b.consumer("t", group="g", commit="manual")
            await b.send_batch("t", [b"old0", b"old1"], partition=0)
            old = await c.poll(timeout=5)
            assert [m.offset for m in old] == [0, 1]
            await b.delete_topic("t")
            await b.create_topic("t")
            await b.send_batch("t", [b"new0", b"new1", b"new2"], partition=0)
            with pytest.raises(mqlite.CommitFailedError):
                await c.commit()
            assert _offsets(await c.poll(timeout=5)) == NEW
            await c.commit()
            assert await c.committed(TP0) == 3
            await c.close()

    asyncio.run(main())

