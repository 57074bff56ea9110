"""D64: a consumer that reads exactly one partition waits on that partition's wake-up word.

Appends to the topic's other partitions leave that word alone (a group of N members with one
partition each wakes one member per message, not N); every way of appending to the partition
moves it, and so do the changes a reader of one partition must see at once (a group's
membership, a topic's deletion or new partitions, a delayed message being scheduled).

A wait on a word nobody bumps lasts its whole timeout (the consumers below have no group,
whose members re-read every second): a missed wake-up makes ``poll(timeout=WAIT_S)`` return
the message only after ``WAIT_S``, and "woken" is judged against that, as in
tests/integration/test_wakeup.py: within ``WOKEN_S``, a third of it (a loaded machine wakes
a thread late, never by 10 s).
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import mqlite
from mqlite import TopicPartition

#: The waiting poll's timeout, and the bound that tells a wake-up from it (seconds).
WAIT_S = 30.0
WOKEN_S = 10.0


@pytest.fixture
def broker(tmp_path: Any) -> Any:
    with mqlite.open(str(tmp_path / "b"), durability="none") as b:
        b.create_topic("t", partitions=3)
        yield b


def _word(consumer: Any) -> int:
    """The value of the wake-up word the consumer's next poll would wait on."""
    return int(consumer._env.notifier.load(consumer._wait_slots()[0]))


def _one_partition_reader(b: Any, partition: int) -> Any:
    c = b.consumer()
    c.assign([TopicPartition("t", partition)])
    c.seek_to_end()
    assert c.poll(timeout=0.01) == []  # a round that read the partition: its id is known
    return c


def test_a_reader_of_one_partition_waits_on_that_partitions_word(broker: Any) -> None:
    env = broker._engine.env
    pids = broker._engine.topic_fresh("t").pids
    slots = [env.partition_slot(p) for p in pids] + [env.topic_slot("t"), 0]
    assert len(set(slots)) == len(slots)  # no collisions here: the test below means it
    c = _one_partition_reader(broker, 1)
    assert c._wait_slots()[0] == env.partition_slot(pids[1])
    before = _word(c)
    broker.send("t", b"a", partition=0)
    broker.send("t", b"b", partition=2)
    broker.send_batch("t", [b"c", b"d"], partition=0)
    assert _word(c) == before  # other partitions' appends do not wake it
    broker.send("t", b"e", partition=1)
    assert _word(c) != before
    assert [m.value for m in c.poll(timeout=1.0)] == [b"e"]
    c.close()


def _words(consumer: Any) -> tuple[int, ...]:
    n = consumer._env.notifier
    return tuple(int(n.load(slot)) for slot in consumer._wait_slots())


def test_a_reader_of_several_partitions_waits_on_each_of_their_words(broker: Any) -> None:
    env = broker._engine.env
    pids = broker._engine.topic_fresh("t").pids
    c = broker.consumer()
    c.assign([TopicPartition("t", 0), TopicPartition("t", 1)])
    assert c.poll(timeout=0.01) == []
    assert c._wait_slots() == (env.partition_slot(pids[0]), env.partition_slot(pids[1]))
    before = _words(c)
    broker.send("t", b"x", partition=2)
    assert _words(c) == before
    broker.send("t", b"y", partition=1)
    assert _words(c)[1] != before[1]
    c.close()


def test_subscribers_without_a_group_wait_on_their_topics_words(broker: Any) -> None:
    env = broker._engine.env
    broker.create_topic("u")
    broker.create_topic("other")
    whole = broker.consumer("t")  # every partition of one topic: the topic's word
    assert whole.poll(timeout=0.01) == []
    assert whole._wait_slots() == (env.topic_slot("t"),)
    two = broker.consumer(["t", "u"])  # two topics: both words, not every append's
    assert two.poll(timeout=0.01) == []
    assert two._wait_slots() == (env.topic_slot("t"), env.topic_slot("u"))
    before = _words(two)
    broker.send("other", b"x")
    assert _words(two) == before
    broker.send("u", b"y")
    assert _words(two) != before
    whole.close()
    two.close()


@pytest.mark.parametrize("target", [("t", 0), ("t", 1), ("u", 0)],
                         ids=["first-partition", "second-partition", "second-topic"])
def test_a_reader_of_several_words_is_woken_by_any_of_them(broker: Any,
                                                          target: tuple[str, int]) -> None:
    """Asleep in poll on two partition words (assign) or two topic words (subscribe)."""
    broker.create_topic("u")
    broker.create_topic("other")
    if target[0] == "u":
        c = broker.consumer(["t", "u"])
        c.seek_to_end()
    else:
        c = broker.consumer()
        c.assign([TopicPartition("t", 0), TopicPartition("t", 1)])
        c.seek_to_end()
    assert c.poll(timeout=0.01) == []
    assert len(c._wait_slots()) == 2
    got: list[Any] = []
    took: list[float] = []
    entered = threading.Event()

    def wait() -> None:
        entered.set()
        t0 = time.monotonic()
        got.extend(c.poll(timeout=WAIT_S))
        took.append(time.monotonic() - t0)

    t = threading.Thread(target=wait)
    t.start()
    assert entered.wait(WAIT_S)
    if target[0] == "u":
        broker.send("other", b"other")  # neither of its words
    else:
        broker.send("t", b"other", partition=2)
    broker.send(target[0], b"v", partition=target[1])
    t.join(WAIT_S + 10)
    assert not t.is_alive()
    assert [(m.topic, m.partition, m.value) for m in got] == [(*target, b"v")]
    assert took[0] < WOKEN_S, f"woken after {took[0]:.1f} s: the append did not wake it"
    c.close()


def test_an_async_reader_of_several_partitions_is_woken_by_either(tmp_path: Any) -> None:
    import asyncio

    import mqlite.aio

    async def main() -> list[Any]:
        async with mqlite.aio.open(str(tmp_path / "b"), durability="none") as ab:
            await ab.create_topic("t", partitions=3)
            c = ab.consumer()
            c.assign([TopicPartition("t", 0), TopicPartition("t", 1)])
            await c.seek_to_end()
            assert await c.poll(timeout=0.01) == []
            assert len(c.sync._wait_slots()) == 2
            waiting = asyncio.ensure_future(c.poll(timeout=WAIT_S))
            await asyncio.sleep(0)  # the poll's first round runs and arms its words
            t0 = time.monotonic()
            await ab.send("t", b"other", partition=2)
            await ab.send("t", b"v", partition=1)
            got = await asyncio.wait_for(waiting, WAIT_S + 10)
            assert time.monotonic() - t0 < WOKEN_S
            await c.close()
            return [(m.partition, m.value) for m in got]

    assert asyncio.run(main()) == [(1, b"v")]


def _publish(b: Any) -> None:
    b.declare_exchange("x", "direct")
    b.bind("x", "t", "k")
    key = next(k for k in (b"k%d" % i for i in range(1000))
               if mqlite._core.partition_for_key(k, 3) == 1)
    assert b.publish("x", "k", b"v", key=key)[0].partition == 1


def _transaction(b: Any) -> None:
    with b.transaction() as tx:
        tx.send("t", b"v", partition=1)


def _producer(b: Any) -> None:
    with b.producer() as p:
        p.send("t", b"v", partition=1).result(timeout=WAIT_S)


def _delayed(b: Any) -> None:
    b.send("t", b"v", partition=1, delay=0.05)


APPENDS: dict[str, Callable[[Any], None]] = {
    "send": lambda b: b.send("t", b"v", partition=1),
    "send-key": lambda b: b.send("t", b"v", key=next(
        k for k in (b"k%d" % i for i in range(1000))
        if mqlite._core.partition_for_key(k, 3) == 1)),
    "send_batch": lambda b: b.send_batch("t", [b"v"], partition=1),
    "send-dedup": lambda b: b.send("t", b"v", partition=1, dedup_id="d1"),
    "send-headers": lambda b: b.send("t", b"v", partition=1, headers={"h": b"1"}),
    "producer": _producer,
    "transaction": _transaction,
    "publish": _publish,
    "delayed": _delayed,
}


@pytest.mark.parametrize("how", sorted(APPENDS))
def test_every_append_to_the_partition_wakes_its_reader(broker: Any, how: str) -> None:
    """The reader sleeps in poll on its partition's word; another thread appends there."""
    c = _one_partition_reader(broker, 1)
    got: list[Any] = []
    took: list[float] = []
    entered = threading.Event()

    def wait() -> None:
        entered.set()
        t0 = time.monotonic()
        got.extend(c.poll(timeout=WAIT_S))
        took.append(time.monotonic() - t0)

    t = threading.Thread(target=wait)
    t.start()
    assert entered.wait(WAIT_S)
    broker.send("t", b"other", partition=0)  # not its partition: it sleeps on
    APPENDS[how](broker)
    t.join(WAIT_S + 10)
    assert not t.is_alive()
    assert [(m.partition, m.value) for m in got] == [(1, b"v")]
    assert took[0] < WOKEN_S, f"woken after {took[0]:.1f} s: the append did not wake it"
    c.close()


def test_a_topics_new_partitions_and_its_deletion_move_the_word(broker: Any) -> None:
    c = _one_partition_reader(broker, 1)
    before = _word(c)
    broker.alter_topic("t", partitions=4)
    after_alter = _word(c)
    assert after_alter != before
    slot = c._wait_slots()[0]
    broker.delete_topic("t")
    assert int(broker._engine.env.notifier.load(slot)) != after_alter
    c.close()


def test_a_groups_membership_change_moves_each_members_partition_word(tmp_path: Any) -> None:
    with mqlite.open(str(tmp_path / "b"), durability="none") as b:
        b.create_topic("t", partitions=2)
        a = b.consumer("t", group="g")
        other = b.consumer("t", group="g")
        for _ in range(50):  # both joined, one partition each
            a.poll(timeout=0.01)
            other.poll(timeout=0.01)
            if len(a.assignment()) == 1 and len(other.assignment()) == 1:
                break
        a.poll(timeout=0.01)
        assert len(a.assignment()) == 1
        env = b._engine.env
        pid = b._engine.topic_fresh("t").pids[a.assignment()[0].partition]
        assert a._wait_slots()[0] == env.partition_slot(pid)
        before = _word(a)
        other.close()  # leaves: a must learn it at once, waiting on its partition's word
        assert _word(a) != before
        a.close()


def _reader_process(path: str, ready: Any, out: Any) -> None:
    with mqlite.open(path, durability="none") as b:
        c = b.consumer()
        c.assign([TopicPartition("t", 2)])
        c.seek_to_end()
        c.poll(timeout=0.01)
        ready.set()
        t0 = time.monotonic()
        got = [(m.partition, m.value) for m in c.poll(timeout=WAIT_S)]
        out.put((got, time.monotonic() - t0))
        c.close()


def test_another_process_sending_to_the_partition_wakes_its_reader(broker: Any,
                                                                   tmp_path: Any) -> None:
    ctx = mp.get_context("spawn")
    ready, out = ctx.Event(), ctx.Queue()
    p = ctx.Process(target=_reader_process, args=(str(tmp_path / "b"), ready, out))
    p.start()
    try:
        assert ready.wait(60)
        broker.send("t", b"p0", partition=0)
        broker.send("t", b"p1", partition=1)
        broker.send("t", b"p2", partition=2)
        got, took = out.get(timeout=WAIT_S + 30)
        assert got == [(2, b"p2")]
        assert took < WOKEN_S, f"woken after {took:.1f} s: the send did not wake it"
    finally:
        p.join(30)
        if p.is_alive():
            p.kill()
    assert p.exitcode == 0


def test_an_append_handed_through_the_commit_ring_moves_its_partitions_word(
        tmp_path: Any) -> None:
    """A slot filled for partition 1 is applied by the next sender's commit (to partition 0),
    in the compiled ring apply: the reader of partition 1 is woken by that commit."""
    import os

    from mqlite import _core

    with mqlite.open(str(tmp_path / "b"), durability="sync") as b:
        b.create_topic("t", partitions=3)
        b.send("t", b"warm", partition=0)
        c = _one_partition_reader(b, 1)
        before = _word(c)
        eng = b._engine
        maxb = eng.topic_fresh("t").config["max_message_bytes"]
        batch = _core.encode_batches((b"handed",), None, None, 1000, max_message_bytes=maxb)[0]
        comb = eng.env.combiner
        i = comb.claim(os.getpid())
        assert i >= 0
        ticket = comb.fill(i, eng.ring_payload("t", 1, 1000, maxb, [batch], None))
        b.send("t", b"leader", partition=0)
        assert comb.word(i) == (ticket, _core.DONE)  # led through the ring
        assert comb.release(i, ticket)
        assert _word(c) != before
        assert [m.value for m in c.poll(timeout=1.0)] == [b"handed"]
        c.close()


def test_a_reader_whose_topic_is_recreated_waits_on_the_new_partitions_word(
        broker: Any) -> None:
    """Deleted and created again, the topic's partition 1 gets a new id: the round that
    learns it waits on the new id's word, not the old one's (it loads that word and reads
    again first)."""
    c = _one_partition_reader(broker, 1)
    env = broker._engine.env
    old_pid = broker._engine.topic_fresh("t").pids[1]
    broker.delete_topic("t")
    broker.create_topic("u", partitions=2)  # takes the freed ids first, if any are reused
    broker.create_topic("t", partitions=3)
    new_pid = broker._engine.topic_fresh("t").pids[1]
    assert new_pid != old_pid
    assert env.partition_slot(new_pid) != env.partition_slot(old_pid)
    c.seek(TopicPartition("t", 1), 0)
    step = c.poll_step(10)  # the round a poll would run before it waits
    assert not step.done
    assert step.slot == env.partition_slot(new_pid)
    assert step.seq == env.notifier.load(step.slot)
    broker.send("t", b"v", partition=1)
    assert env.notifier.load(step.slot) != step.seq  # so the send wakes that wait
    assert [m.value for m in c.poll(timeout=1.0)] == [b"v"]
    c.close()
