"""``Consumer.read_ahead``: the next batch read beside a commit, returned only while still next.

``mqlite.aio``'s ``commit()`` reads the batch the next ``poll`` will return on
the loop while a worker thread commits; these tests hold the promise that a
read-ahead batch changes nothing a poll returns: every message once, in
order, and nothing after a seek, a new assignment or another ``max_records``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import mqlite
import mqlite.aio
from mqlite import TopicPartition

TP0, TP1 = TopicPartition("t", 0), TopicPartition("t", 1)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[mqlite.Broker]:
    b = mqlite.open(tmp_path / "b", durability="none")
    b.create_topic("t", partitions=2)
    yield b
    b.close()


def _fill(b: mqlite.Broker, n: int, partition: int = 0, tag: str = "m") -> None:
    b.send_batch("t", [f"{tag}{i}".encode() for i in range(n)], partition=partition)


def _started(b: mqlite.Broker, tps: list[TopicPartition]) -> mqlite.Consumer:
    """A consumer whose positions are resolved (an empty first poll resolves them)."""
    c = b.consumer()
    c.assign(tps)
    for tp in tps:
        c.seek(tp, 0)
    return c


def test_the_batch_read_ahead_is_the_next_poll(broker: mqlite.Broker) -> None:
    _fill(broker, 10)
    c = _started(broker, [TP0])
    assert c.read_ahead(4) is True
    assert c.positions() == {TP0: 0}  # nothing consumed yet
    _fill(broker, 3, tag="late")  # arrives after the read: a later poll returns it
    assert [m.value for m in c.poll(4, timeout=1)] == [b"m0", b"m1", b"m2", b"m3"]
    assert c.positions() == {TP0: 4}
    rest = c.poll(100, timeout=1)
    assert [m.value for m in rest] == [b"m4", b"m5", b"m6", b"m7", b"m8", b"m9",
                                       b"late0", b"late1", b"late2"]
    c.close()


def test_a_seek_discards_the_batch(broker: mqlite.Broker) -> None:
    _fill(broker, 10)
    c = _started(broker, [TP0])
    assert c.read_ahead(5)
    c.seek(TP0, 7)
    assert [m.offset for m in c.poll(5, timeout=1)] == [7, 8, 9]
    c.close()


def test_another_max_records_reads_afresh(broker: mqlite.Broker) -> None:
    _fill(broker, 10)
    c = _started(broker, [TP0])
    assert c.read_ahead(5)
    assert [m.offset for m in c.poll(2, timeout=1)] == [0, 1]
    assert [m.offset for m in c.poll(5, timeout=1)] == [2, 3, 4, 5, 6]
    c.close()


def test_a_new_assignment_discards_the_batch(broker: mqlite.Broker) -> None:
    _fill(broker, 3, partition=0, tag="p0-")
    _fill(broker, 3, partition=1, tag="p1-")
    c = _started(broker, [TP0, TP1])
    assert c.read_ahead(100)
    c.assign([TP1])
    c.seek(TP1, 0)
    got = c.poll(100, timeout=1)
    assert {m.partition for m in got} == {1}
    assert [m.value for m in got] == [b"p1-0", b"p1-1", b"p1-2"]
    c.close()


def test_nothing_is_kept_when_there_is_nothing_to_read_or_to_resolve(
        broker: mqlite.Broker) -> None:
    c = _started(broker, [TP0])
    assert c.read_ahead(10) is False  # nothing stored
    fresh = broker.consumer("t", group="g")  # positions not resolved until its first poll
    _fill(broker, 2)
    assert fresh.read_ahead(10) is False
    assert [m.offset for m in c.poll(10, timeout=1)] == [0, 1]
    fresh.close()
    c.close()
    assert c.read_ahead(10) is False  # closed: nothing read, nothing raised


def test_bad_max_records(broker: mqlite.Broker) -> None:
    c = _started(broker, [TP0])
    with pytest.raises(ValueError):
        c.read_ahead(0)
    with pytest.raises(TypeError):
        c.read_ahead("10")  # type: ignore[arg-type]
    c.close()


def test_read_ahead_beside_a_committing_thread(broker: mqlite.Broker) -> None:
    """read_ahead runs while another thread is inside commit(): neither raises
    ConcurrentAccessError, and polling afterwards still returns every message once."""
    _fill(broker, 400)
    c = broker.consumer("t", group="g")
    first = c.poll(100, timeout=5)
    assert first
    stop = threading.Event()
    errors: list[BaseException] = []

    def committer() -> None:
        try:
            while not stop.is_set():
                c.commit()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t = threading.Thread(target=committer)
    t.start()
    try:
        for _ in range(200):
            c.read_ahead(100)
    finally:
        stop.set()
        t.join(30)
    assert not errors
    seen = [(m.partition, m.offset) for m in first]
    while True:
        got = c.poll(100, timeout=0.2)
        if not got:
            break
        seen.extend((m.partition, m.offset) for m in got)
    assert seen == [(0, o) for o in range(400)]
    c.close()


def test_aio_poll_commit_loop_returns_every_message_once(tmp_path: Path) -> None:
    async def main() -> list[tuple[int, int]]:
        async with mqlite.aio.open(tmp_path / "b", durability="sync") as b:
            await b.create_topic("t", partitions=2)
            for p in (0, 1):
                await b.send_batch("t", [b"x"] * 2500, partition=p)
            c = b.consumer("t", group="g")
            got: list[tuple[int, int]] = []
            while len(got) < 5000:
                msgs = await c.poll(300, timeout=5)
                assert msgs
                got.extend((m.partition, m.offset) for m in msgs)
                await c.commit()
            assert await c.poll(300, timeout=0.05) == []
            assert await c.committed([TP0, TP1]) == {TP0: 2500, TP1: 2500}
            await c.close()
            return got

    got = asyncio.run(main())
    assert len(got) == len(set(got)) == 5000
    for p in (0, 1):
        assert [o for q, o in got if q == p] == list(range(2500))


@pytest.mark.parametrize("assignor", ["range", "cooperative-sticky"])
def test_a_rebalance_discards_the_batch_of_revoked_partitions(tmp_path: Path,
                                                               assignor: str) -> None:
    """A batch read ahead over six partitions; a second member joins; the first member's
    next polls return only partitions it still owns, and the two members together
    return every message (nothing is committed in between)."""
    b = mqlite.open(tmp_path / "b", durability="none")
    try:
        b.create_topic("t", partitions=6)
        for p in range(6):
            _fill(b, 5, partition=p, tag=f"p{p}-")
        c1 = b.consumer("t", group="g", assignor=assignor)
        first = c1.poll(100, timeout=5)  # every position resolved
        assert len(first) == 30
        for p in range(6):
            _fill(b, 5, partition=p, tag=f"p{p}-again-")
        assert c1.read_ahead(100)
        c2 = b.consumer("t", group="g", assignor=assignor)
        c2.poll(timeout=0.01)  # joins; nothing is free until c1 gives something up
        seen = [(m.partition, m.offset) for m in first]
        for _ in range(50):
            got = c1.poll(100, timeout=0.01)
            owned = {tp.partition for tp in c1.assignment()}
            assert {m.partition for m in got} <= owned
            seen.extend((m.partition, m.offset) for m in got)
            got2 = c2.poll(100, timeout=0.01)
            seen.extend((m.partition, m.offset) for m in got2)
            if len(set(seen)) == 60 and len(c2.assignment()) == 3:
                break
        assert len(c1.assignment()) == len(c2.assignment()) == 3
        # eager revocation re-reads from the committed offsets (none): a revoked
        # partition's messages may come again, never go missing
        assert set(seen) == {(p, o) for p in range(6) for o in range(10)}
        c2.close()
        c1.close()
    finally:
        b.close()
