"""D70, D74: a change that makes a message receivable wakes a waiting receiver of every
queue group of its topic.

Writers wake *one* thread asleep on a queue group's word (D67); every group has a word
of its own (D74; D70 had the receivers of a topic with several groups wait on the
topic's word, woken all at once), so each group gets a wake-up.  The exact count (one
receiver per group, no more) is in test_queue_group_words.py.

Each test gives every group a message in flight with the earliest visibility deadline
(a "holder"), so that deliveries bump nobody on their own (as in steady work) and only
the send can wake anyone; a receiver must get the message within ``WOKEN_S`` of a
receive that waits up to ``WAIT_S`` (before D70 one of them waited out its ``WAIT_S``).
Sleepers are read from ``notify.shm`` (registered futex waiters), counted over the
topic's word and its groups' words.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import queue as _queue
import threading
import time
from pathlib import Path
from typing import Any

from _queue_waits import hold, stop_children, until_asleep

import mqlite
import mqlite.aio
from mqlite._storage import queues as _queues
from mqlite._storage.env import NOTIFY_SLOTS, QUEUE_WORD_FIRST

#: The topics the ``broker`` fixture creates (tests/unit/conftest.py).  One partition:
#: a receive that took one message of two would wake the next receiver anyway (it did
#: not look at the other partition: D67's "more" chain).
BROKER_TOPICS = {"one": 1}
WAIT_S = 30.0
WOKEN_S = 10.0
HOLD_S = 20.0  # the holders' visibility timeout: earlier than the receivers' 30 s


def _words(broker: Any) -> tuple[int, ...]:
    """The topic's word and the words of the queue groups of topic "one" that exist."""
    env = broker._engine.live_env()
    with broker._engine.read() as txn:
        words = _queues.words_of(txn, env.dbs, "one", QUEUE_WORD_FIRST, NOTIFY_SLOTS)
    return (env.topic_slot("one"), *words)


class _Worker(threading.Thread):
    """Joins ``group``, finds nothing once, then receives one message with a long
    timeout; ``started`` is set between the two."""

    def __init__(self, broker: Any, group: str) -> None:
        super().__init__(name=group)
        self.q = broker.queue("one", group)
        self.started = threading.Event()
        self.got: list[bytes] | None = None
        self.took = 0.0

    def run(self) -> None:
        assert self.q.receive(1, timeout=0.01) == []
        self.started.set()
        t0 = time.monotonic()
        ds = self.q.receive(1, timeout=WAIT_S)
        self.took = time.monotonic() - t0
        self.got = [d.value for d in ds]


def _check(workers: list[_Worker]) -> None:
    for w in workers:
        w.join(WAIT_S + 10)
    for w in workers:
        w.q.close()
    for w in workers:
        assert w.got == [b"m"], (w.name, w.got, f"after {w.took:.1f} s")
        assert w.took < WOKEN_S, f"group {w.name}'s receiver got it after {w.took:.1f} s"


def test_a_send_wakes_a_waiting_receiver_of_every_group(broker: Any, tmp_broker_dir: Path) -> None:
    """Two groups of one topic, each with one receiver asleep: one send reaches both
    (before D70, the one the send's one-waiter wake-up missed slept until its timeout;
    the D69 finding, pinned then as a strict xfail)."""
    broker.send("one", b"held")
    holders = [hold(broker, g, HOLD_S) for g in ("g1", "g2")]
    workers = [_Worker(broker, g) for g in ("g1", "g2")]
    for w in workers:
        w.start()
    for w in workers:
        assert w.started.wait(WAIT_S)
    until_asleep(tmp_broker_dir, _words(broker), 2, total=True)
    broker.send("one", b"m")
    _check(workers)
    for h in holders:
        h.close()


def test_a_group_created_after_a_receiver_slept_is_woken_and_so_is_that_receiver(
        broker: Any, tmp_broker_dir: Path) -> None:
    """Group g1's receiver goes to sleep while g1 is the topic's only queue group (on
    the queues' word, woken one at a time); then g2 is created and its receiver sleeps.
    One send must reach both: g1's, which decided how to wait before g2 existed, and
    g2's.  Nothing bumps either word between g1's sleep and the send (g2's holder is
    the group's first delivery, which moves no deadline earlier), so g1's receiver is
    still in the wait it chose alone."""
    broker.send("one", b"held")
    h1 = hold(broker, "g1", HOLD_S)
    w1 = _Worker(broker, "g1")
    w1.start()
    assert w1.started.wait(WAIT_S)
    until_asleep(tmp_broker_dir, _words(broker), 1, total=True)
    t_word, q_word = _words(broker)  # the topic's, g1's
    seqs = (broker.notifier.load(q_word), broker.notifier.load(t_word))
    h2 = hold(broker, "g2", HOLD_S)  # creates g2
    w2 = _Worker(broker, "g2")
    w2.start()
    assert w2.started.wait(WAIT_S)
    until_asleep(tmp_broker_dir, _words(broker), 2, total=True)
    # g1's receiver was not woken meanwhile: it still sleeps in the wait it chose alone
    assert (broker.notifier.load(q_word), broker.notifier.load(t_word)) == seqs
    broker.send("one", b"m")
    _check([w1, w2])
    h1.close()
    h2.close()


def _receive_in_process(path: str, group: str, ready: Any, done: Any, out: Any) -> None:
    """A receiver of ``group`` in its own process: finds nothing once, sets ``ready``,
    then receives one message with a long timeout and reports it.  It closes only once
    ``done`` is set: a close wakes every waiter of the word, the other process's too."""
    with mqlite.open(path, durability="none") as b:
        q = b.queue("one", group)
        q.receive(1, timeout=0.01)
        ready.set()
        t0 = time.monotonic()
        ds = q.receive(1, timeout=WAIT_S)
        out.put((group, [d.value for d in ds], time.monotonic() - t0))
        done.wait(WAIT_S + 20)
        q.close()


def test_a_send_wakes_a_waiting_receiver_of_every_group_across_processes(
        broker: Any, tmp_broker_dir: Path) -> None:
    """As the first test, each group's receiver in a process of its own."""
    broker.send("one", b"held")
    holders = [hold(broker, g, HOLD_S) for g in ("g1", "g2")]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    readies = {g: ctx.Event() for g in ("g1", "g2")}
    done = ctx.Event()
    children = [ctx.Process(target=_receive_in_process,
                            args=(str(tmp_broker_dir), g, readies[g], done, out))
                for g in ("g1", "g2")]
    for c in children:
        c.start()
    try:
        for e in readies.values():
            assert e.wait(60)
        until_asleep(tmp_broker_dir, _words(broker), 2, total=True)
        broker.send("one", b"m")
        got = {}
        for _ in children:
            try:
                group, values, took = out.get(timeout=WAIT_S + 10)
            except _queue.Empty:
                break
            got[group] = (values, took)
    finally:
        stop_children(done, children, holders)
    assert set(got) == {"g1", "g2"}, got
    for g, (values, took) in got.items():
        assert values == [b"m"], got
        assert took < WOKEN_S, f"group {g}'s receiver got it after {took:.1f} s"


def test_an_aio_send_wakes_a_waiting_receiver_of_every_group(tmp_broker_dir: Path) -> None:
    """``mqlite.aio`` (doorbells): a task of each group waiting, one send reaches both."""
    async def main() -> None:
        async with mqlite.aio.open(tmp_broker_dir, durability="none") as b:
            await b.create_topic("one", partitions=1)
            await b.send("one", b"held")
            holders = []
            for g in ("g1", "g2"):
                h = await b.queue("one", g, visibility_timeout=HOLD_S).start()
                assert [d.value for d in await h.receive(1, timeout=WAIT_S)] == [b"held"]
                holders.append(h)
            qs = [await b.queue("one", g).start() for g in ("g1", "g2")]
            for q in qs:
                assert await q.receive(1, timeout=0.01) == []
            bell = b._bell()
            t0 = time.monotonic()
            tasks = [asyncio.create_task(q.receive(1, timeout=WAIT_S)) for q in qs]
            async with asyncio.timeout(WAIT_S):
                while bell.has_doorbell and bell.waiting() < 2:
                    await asyncio.sleep(0.001)  # until both are armed
            await b.send("one", b"m")
            for t in tasks:
                got = await t
                assert [d.value for d in got] == [b"m"]
                assert time.monotonic() - t0 < WOKEN_S
            for q in [*qs, *holders]:
                await q.close()

    asyncio.run(main())
