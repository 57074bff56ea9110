"""D68: a poll round skips its read when nothing it reads can have moved since a read that
reached the end of everything it reads.

The skip must leave every obligation of a round in place: a local change (a seek, a new
assignment, a put-back, a batch read ahead, a delayed message falling due) makes the round
read; any append, a topic's deletion and a group change move the words and so make it read;
the group's part of the round (automatic commit, heartbeat, ``max_poll_interval`` stamp,
rebalance) runs every round.

Reads are counted by wrapping the consumer's ``_fetch``.  A waiting poll that a message
ends runs two rounds; with the skip only the second reads.  A wait nothing ends lasts its
whole timeout, so "woken" is judged as in tests/unit/test_partition_wake.py: a poll with
``timeout=WAIT_S`` returning within ``WOKEN_S`` was woken (a loaded machine wakes a thread
late, never by 10 s).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import mqlite
import mqlite.aio
from mqlite import TopicPartition
from mqlite.consumer import PollStep

WAIT_S = 30.0
WOKEN_S = 10.0
TP0, TP1 = TopicPartition("t", 0), TopicPartition("t", 1)


@pytest.fixture
def broker(tmp_path: Any) -> Iterator[Any]:
    with mqlite.open(str(tmp_path / "b"), durability="none") as b:
        b.create_topic("t", partitions=2)
        yield b


class _Reads:
    """Counts the consumer's reads (``_fetch`` calls) and its skipped reads (``_skip``
    returning a step); ``on_skip`` runs after each skip."""

    def __init__(self, consumer: Any, on_skip: Callable[[], None] | None = None) -> None:
        self.reads = 0
        self.skips = 0
        fetch, skip = consumer._fetch, consumer._skip

        def counted_fetch(*a: Any) -> Any:
            self.reads += 1
            return fetch(*a)

        def counted_skip(*a: Any) -> PollStep | None:
            step = skip(*a)
            if step is not None:
                self.skips += 1
                if on_skip is not None:
                    on_skip()
            return step

        consumer._fetch = counted_fetch
        consumer._skip = counted_skip

    def take(self) -> tuple[int, int]:
        """(reads, skips) since the last call."""
        out = (self.reads, self.skips)
        self.reads = self.skips = 0
        return out


def _assigned(b: Any, tps: list[TopicPartition] = [TP0]) -> Any:  # noqa: B006 - read only
    c = b.consumer()
    c.assign(tps)
    return c


def _drained(c: Any, n: int) -> list[bytes]:
    """Poll until ``n`` messages came, the last poll being one that read to the end."""
    got: list[bytes] = []
    while len(got) < n:
        got.extend(m.value for m in c.poll(100, timeout=WAIT_S))
    return got


def _settle(c: Any, max_records: int = 100) -> None:
    """Run rounds (none may return messages) until the last one read to the end under the
    words the next round loads: the next round would skip its read."""
    for _ in range(5):
        step = c.poll_step(max_records)
        assert not step.messages
        if c._drained is not None and c._drained.slots == c._wait_slots():
            return
    raise AssertionError("no round read to the end")


# -- the skip -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["assign", "subscribe", "group", "group-two-partitions"])
def test_a_waiting_poll_reads_once_not_twice(broker: Any, kind: str) -> None:
    """A poll that waits for the next message: the first round skips its read (nothing
    moved since the last poll read everything), the round the message wakes reads it."""
    if kind == "assign":
        c = _assigned(broker)
    elif kind == "subscribe":
        c = broker.consumer("t")
    else:
        if kind == "group":
            broker.create_topic("g")
        else:
            broker.create_topic("g", partitions=2)
        c = broker.consumer("g", group="G")
    topic = "t" if kind in ("assign", "subscribe") else "g"
    broker.send(topic, b"a", partition=0)
    assert _drained(c, 1) == [b"a"]
    _settle(c)
    sent = threading.Event()

    def send() -> None:
        broker.send(topic, b"b", partition=0)
        sent.set()

    counts = _Reads(c, on_skip=lambda: threading.Thread(target=send).start())
    t0 = time.monotonic()
    got = c.poll(100, timeout=WAIT_S)
    assert time.monotonic() - t0 < WOKEN_S
    assert [m.value for m in got] == [b"b"]
    assert sent.wait(WAIT_S)
    assert counts.take() == (1, 1)
    c.close()


def test_only_one_round_in_a_row_skips(broker: Any) -> None:
    """A skip is allowed once per read that reached the end: a wake-up lost (a writer that
    died between its commit and its bump) then costs one more wait, not every wait."""
    c = _assigned(broker)
    _settle(c)
    counts = _Reads(c)
    first, second = c.poll_step(), c.poll_step()
    assert counts.take() == (1, 1)
    assert first == second and not first.done
    c.close()


def test_the_skipped_round_waits_as_an_empty_read_would(broker: Any) -> None:
    """The same words, values and bound as a round that reads and finds nothing (here a
    group member: its bound is the group's re-read interval)."""
    c = broker.consumer("t", group="G")
    broker.send("t", b"a", partition=0)
    assert _drained(c, 1) == [b"a"]
    _settle(c)
    counts = _Reads(c)
    skipped = c.poll_step()
    read = c.poll_step()
    assert counts.take() == (1, 1)
    assert skipped == read
    assert skipped.slots and not skipped.done and skipped.wait == 1.0
    c.close()


def test_the_rotation_moves_as_a_read_would(broker: Any) -> None:
    """Partitions are served round-robin by round: a skipped round turns the rotation as
    an empty read does, so which partition a later read starts with is unchanged."""
    c = _assigned(broker, [TP0, TP1])
    _settle(c)
    before = c._rotation
    _Reads(c)
    c.poll_step()  # skipped
    assert c._rotation == before + 1
    c.close()


# -- what makes the round read ---------------------------------------------------------------


def _seek(c: Any) -> None:
    c.seek(TP0, 0)


def _seek_to_beginning(c: Any) -> None:
    c.seek_to_beginning()


def _assign_again(c: Any) -> None:
    c.assign([TP0, TP1])


def _put_back(c: Any) -> None:
    # what a cancelled aio poll's put-back does (mqlite.aio.consumer: a seek to the first
    # offset the round fetched)
    c.seek(TP0, 1)


def _read_ahead(c: Any) -> None:
    # A batch kept while the positions are back where the drained read left them: not a
    # state the API reaches (a read-ahead at the end keeps nothing), so that the check
    # for a kept batch is what the test meets, not the positions'.
    c.seek(TP0, 1)
    assert c.read_ahead(100)
    c.seek(TP0, 2)
    c._ahead = c._ahead._replace(positions=[2])


@pytest.mark.parametrize(("change", "expect"), [
    (_seek, [b"m0", b"m1"]), (_seek_to_beginning, [b"m0", b"m1"]), (_assign_again, [b"p1"]),
    (_put_back, [b"m1"]), (_read_ahead, [b"m1"])],
    ids=["seek", "seek_to_beginning", "assign", "put-back", "read-ahead"])
def test_a_local_change_makes_the_next_round_read(broker: Any, change: Callable[[Any], None],
                                                  expect: list[bytes]) -> None:
    broker.send_batch("t", [b"m0", b"m1"], partition=0)
    broker.send("t", b"p1", partition=1)
    c = _assigned(broker)
    assert _drained(c, 2) == [b"m0", b"m1"]
    _settle(c)
    counts = _Reads(c)
    change(c)
    t0 = time.monotonic()
    got = [m.value for m in c.poll(100, timeout=WAIT_S)]
    assert time.monotonic() - t0 < WOKEN_S
    assert got == expect
    assert counts.take()[1] == 0
    c.close()


def test_a_seek_after_a_drained_poll_is_honoured_at_once(broker: Any) -> None:
    broker.send_batch("t", [b"m0", b"m1", b"m2"], partition=0)
    c = _assigned(broker)
    assert _drained(c, 3) == [b"m0", b"m1", b"m2"]
    _settle(c)
    c.seek(TP0, 1)
    t0 = time.monotonic()
    assert [m.value for m in c.poll(100, timeout=WAIT_S)] == [b"m1", b"m2"]
    assert time.monotonic() - t0 < WOKEN_S
    c.close()


def _send(b: Any) -> None:
    b.send("t", b"new", partition=0)


def _send_batch(b: Any) -> None:
    b.send_batch("t", [b"new"], partition=0)


def _producer(b: Any) -> None:
    with b.producer(linger_ms=0) as p:
        p.send("t", b"new", partition=0).result(WAIT_S)


def _transaction(b: Any) -> None:
    with b.transaction() as tx:
        tx.send("t", b"new", partition=0)


def _publish(b: Any) -> None:
    b.declare_exchange("x", "fanout")
    b.bind("x", "t")
    b.publish("x", "", b"new")  # to the partition the fanout picks: read both below


@pytest.mark.parametrize("write", [_send, _send_batch, _producer, _transaction, _publish],
                         ids=["send", "send_batch", "producer", "transaction", "publish"])
def test_a_message_sent_between_polls_is_returned_at_once(broker: Any,
                                                          write: Callable[[Any], None]) -> None:
    c = _assigned(broker, [TP0, TP1])
    _settle(c)
    counts = _Reads(c)
    write(broker)
    t0 = time.monotonic()
    assert [m.value for m in c.poll(100, timeout=WAIT_S)] == [b"new"]
    assert time.monotonic() - t0 < WOKEN_S
    assert counts.take() == (1, 0)
    c.close()


def test_max_records_leaving_records_behind_reads_on(broker: Any) -> None:
    """A read that stopped at ``max_records`` did not reach the end: the next poll reads."""
    broker.send_batch("t", [b"m0", b"m1", b"m2", b"m3", b"m4"], partition=0)
    c = _assigned(broker)
    assert [m.value for m in c.poll(2, timeout=WAIT_S)] == [b"m0", b"m1"]
    t0 = time.monotonic()
    assert [m.value for m in c.poll(2, timeout=WAIT_S)] == [b"m2", b"m3"]
    assert [m.value for m in c.poll(2, timeout=WAIT_S)] == [b"m4"]
    assert time.monotonic() - t0 < WOKEN_S
    # exactly max_records left: still not known to be the end, so the next round reads
    broker.send_batch("t", [b"m5", b"m6"], partition=0)
    assert [m.value for m in c.poll(2, timeout=WAIT_S)] == [b"m5", b"m6"]
    counts = _Reads(c)
    assert not c.poll_step(2).done
    assert counts.take() == (1, 0)
    c.close()


def test_a_delayed_message_falls_due_while_the_poll_waits(broker: Any) -> None:
    """The skipped round waits until the due time the drained read saw, then reads and
    promotes it (no group: nothing else bounds this wait)."""
    broker.send("t", b"later", partition=0, delay=0.5)
    c = _assigned(broker)
    _settle(c)  # a read that saw the due time
    counts = _Reads(c)
    t0 = time.monotonic()
    got = [m.value for m in c.poll(100, timeout=WAIT_S)]
    took = time.monotonic() - t0
    assert got == [b"later"]
    assert took < WOKEN_S
    reads, skips = counts.take()
    assert skips == 1 and reads >= 1
    c.close()


def test_a_round_after_the_due_time_reads(broker: Any) -> None:
    broker.send("t", b"later", partition=0, delay=0.2)
    c = _assigned(broker)
    _settle(c)
    due = c._drained.due
    assert due is not None
    while time.time_ns() // 1_000_000 <= due:
        time.sleep(0.01)  # waits for the clock, not for another thread
    counts = _Reads(c)
    assert [m.value for m in c.poll(100, timeout=WAIT_S)] == [b"later"]
    assert counts.take()[1] == 0
    c.close()


@pytest.mark.parametrize("how", ["assign", "subscribe", "group"])
def test_a_deleted_topic_raises_in_the_next_poll(broker: Any, how: str) -> None:
    c = (_assigned(broker) if how == "assign" else
         broker.consumer("t", group="G") if how == "group" else broker.consumer("t"))
    _settle(c)
    broker.delete_topic("t")
    with pytest.raises(mqlite.TopicNotFoundError):
        c.poll(timeout=WAIT_S)
    c.close()


# -- the group's part of the round -------------------------------------------------------------


def test_commit_after_commits_at_the_next_poll_even_when_it_skips(broker: Any) -> None:
    c = broker.consumer("t", group="G", commit="after")
    _settle(c)
    broker.send("t", b"a", partition=0)
    assert [m.value for m in c.poll(100, timeout=WAIT_S)] == [b"a"]
    assert c.committed(TP0) == 0  # (the settling rounds committed the start)
    counts = _Reads(c)
    member = c._group
    stamp = member._last_poll
    assert not c.poll_step().done
    assert counts.take() == (0, 1)
    assert c.committed(TP0) == 1
    assert member._last_poll > stamp  # max_poll_interval counts from this poll
    c.close()


def test_a_rebalance_after_a_drained_poll(broker: Any) -> None:
    """A member drained on both partitions; a second joins: each then receives exactly the
    messages of the partition it owns, none twice."""
    a = broker.consumer("t", group="G", commit="after")
    broker.send_batch("t", [b"a0"], partition=0)
    broker.send_batch("t", [b"a1"], partition=1)
    assert sorted(_drained(a, 2)) == [b"a0", b"a1"]
    b = broker.consumer("t", group="G", commit="after")
    got: dict[str, list[tuple[int, bytes]]] = {"a": [], "b": []}
    deadline = time.monotonic() + WAIT_S
    while (len(a.assignment()) != 1 or len(b.assignment()) != 1) and \
            time.monotonic() < deadline:
        got["a"] += [(m.partition, m.value) for m in a.poll(timeout=0.01)]
        got["b"] += [(m.partition, m.value) for m in b.poll(timeout=0.01)]
    assert sorted(a.assignment() + b.assignment()) == [TP0, TP1]
    broker.send("t", b"n0", partition=0)
    broker.send("t", b"n1", partition=1)
    while len(got["a"]) + len(got["b"]) < 2 and time.monotonic() < deadline:
        got["a"] += [(m.partition, m.value) for m in a.poll(timeout=0.01)]
        got["b"] += [(m.partition, m.value) for m in b.poll(timeout=0.01)]
    assert sorted(got["a"] + got["b"]) == [(0, b"n0"), (1, b"n1")]
    for name, c in (("a", a), ("b", b)):
        assert {TopicPartition("t", p) for p, _ in got[name]} <= set(c.assignment())
    a.close()
    b.close()


def test_a_new_owned_list_makes_the_round_read(broker: Any) -> None:
    """An assignment change the words did not show (here forced): the round reads."""
    c = broker.consumer("t", group="G")
    _settle(c)
    member = c._group
    member.owned = list(member.owned)  # equal, but a new list: what every change assigns
    counts = _Reads(c)
    c.poll_step()
    assert counts.take() == (1, 0)
    c.close()


# -- mqlite.aio -------------------------------------------------------------------------------


def test_aio_poll_skips_and_is_woken(tmp_path: Any) -> None:
    async def main() -> None:
        async with mqlite.aio.open(str(tmp_path / "a"), durability="none") as b:
            await b.create_topic("t", partitions=2)
            c = b.consumer("t", group="G", commit="manual")
            await b.send("t", b"a", partition=0)
            got: list[bytes | None] = []
            while not got:
                got = [m.value for m in await c.poll(100, timeout=WAIT_S)]
            _settle(c.sync)
            loop = asyncio.get_running_loop()
            sends: list[asyncio.Task[Any]] = []

            def send() -> None:
                sends.append(loop.create_task(b.send("t", b"b", partition=0)))

            def on_skip() -> None:
                loop.call_soon_threadsafe(send)

            counts = _Reads(c.sync, on_skip=on_skip)
            t0 = loop.time()
            assert [m.value for m in await c.poll(100, timeout=WAIT_S)] == [b"b"]
            assert loop.time() - t0 < WOKEN_S
            assert counts.take() == (1, 1)
            await asyncio.gather(*sends)
            await c.close()

    asyncio.run(main())


def test_aio_read_ahead_batch_is_returned_after_a_drained_poll(tmp_path: Any) -> None:
    async def main() -> None:
        async with mqlite.aio.open(str(tmp_path / "a"), durability="none") as b:
            await b.create_topic("t")
            c = b.consumer("t", group="G", commit="manual")
            await b.send("t", b"a")
            got: list[bytes | None] = []
            while not got:
                got = [m.value for m in await c.poll(100, timeout=WAIT_S)]
            await b.send_batch("t", [b"b", b"c"])
            await c.commit()  # reads the next batch ahead on the loop
            assert [m.value for m in await c.poll(100, timeout=WAIT_S)] == [b"b", b"c"]
            await c.close()

    asyncio.run(main())


# -- another process --------------------------------------------------------------------------


def _sender_process(path: str, go: Any) -> None:
    assert go.wait(WAIT_S + 30)
    with mqlite.open(path, durability="none") as b:
        b.send("t", b"from-child", partition=0)


def test_another_processs_send_wakes_a_round_that_skipped(broker: Any, tmp_path: Any) -> None:
    c = _assigned(broker)
    _settle(c)
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    p = ctx.Process(target=_sender_process, args=(str(tmp_path / "b"), go))
    p.start()
    try:
        counts = _Reads(c, on_skip=go.set)  # the child sends once this poll skipped its read
        t0 = time.monotonic()
        got = [m.value for m in c.poll(100, timeout=WAIT_S)]
        took = time.monotonic() - t0
        assert got == [b"from-child"]
        assert took < WOKEN_S, f"woken after {took:.1f} s: the send did not wake it"
        assert counts.take() == (1, 1)
    finally:
        go.set()
        p.join(60)
        if p.is_alive():
            p.kill()
    assert p.exitcode == 0
    c.close()
