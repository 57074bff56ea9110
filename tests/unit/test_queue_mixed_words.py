"""D85: a queue group whose consumers were registered on both sides of its word's
allocation.

A group registered while every queue word (2,047, D74) was taken has none: its receivers
wait on the topic's word (``Queue._one`` false).  A topic's deletion frees words, so a
later consumer of the same group allocates one for the group; from then on the group's
settles (``nack``, ``extend``, ``close``), its receivers' chained wake-ups and writers
wake one receiver on the group's word only.  Before D85 the earlier consumer slept on
the topic's word through all of them and got a nacked message only at its timeout.  Now
the allocating registration wakes the topic's word, and a consumer without a word reads
the group's word again whenever the version word (``QUEUE_VERSION_SLOT``, bumped by every
registration) moved, so it moves to the group's word.

The table is filled with real registrations (about 1 ms each), as in
test_queue_group_words.py.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from _polling import queue_word
from _queue_waits import count_waits, every_doorbell_taken, until_asleep, woken

import mqlite
import mqlite.aio
from mqlite._storage.env import NOTIFY_SLOTS, QUEUE_WORD_FIRST

BROKER_TOPICS = {"one": 1}
WAIT_S = 30.0  # a holder's visibility timeout: no deadline ends a receive before it
RECEIVE_S = 20.0  # the receives' timeout (before the deadline): a missed wake-up is []


def _fill(broker: Any) -> None:
    """Every queue word but the last taken by groups of "fill", the last by a group of
    "spare" (deleting "spare" frees it)."""
    broker.create_topic("fill")
    broker.create_topic("spare")
    for i in range(NOTIFY_SLOTS - QUEUE_WORD_FIRST - 1):
        broker.queue("fill", f"f{i}").close()
    broker.queue("spare", "s").close()


def _receive_in_thread(q: Any, out: dict[str, Any]) -> threading.Thread:
    def run() -> None:
        out["got"] = q.receive(1, timeout=RECEIVE_S)

    t = threading.Thread(target=run, name="b1")
    t.start()
    return t


@pytest.mark.parametrize("asleep", [True, False])
def test_a_consumer_registered_without_a_word_is_woken_by_its_groups_nack(
        broker: Any, tmp_broker_dir: Path, monkeypatch: pytest.MonkeyPatch,
        asleep: bool) -> None:
    """b1 (and holder h) registered with no word free; "spare"'s deletion frees one,
    which b2 (same group) allocates.  b2 nacks message "m": the nack wakes one receiver
    of the group's word.  b1's receive, asleep on the topic's word since before b2
    registered (``asleep``: h holds "m", b2 nacks h's delivery) or started after b2
    took "m", gets it long before its timeout (before D85: ``[]`` at its timeout,
    asleep on the topic's word, which the nack does not move)."""
    topic_word = broker._engine.live_env().topic_slot("one")
    _fill(broker)
    b1 = broker.queue("one", "b", visibility_timeout=WAIT_S)
    assert (b1._one, b1._slot) == (False, topic_word)
    waits = count_waits(monkeypatch)
    h = broker.queue("one", "b", visibility_timeout=WAIT_S)
    broker.send("one", b"m")
    out: dict[str, Any] = {}
    t = None
    try:
        if asleep:
            held = h.receive(1, timeout=WAIT_S)
            t = _receive_in_thread(b1, out)
            until_asleep(tmp_broker_dir, [topic_word], 1)
        broker.delete_topic("spare")
        b2 = broker.queue("one", "b", visibility_timeout=WAIT_S)
        word = queue_word(broker, "one", "b")
        assert (b2._one, b2._slot) == (True, word) and word == NOTIFY_SLOTS - 1
        if not asleep:
            held = b2.receive(1, timeout=WAIT_S)
            t = _receive_in_thread(b1, out)
        assert [d.value for d in held] == [b"m"]
        until_asleep(tmp_broker_dir, [word, topic_word], 1, total=True)
        assert b2.nack(held) == 1 and t is not None
        t.join(RECEIVE_S + 10)
        assert [(d.value, d.delivery_count) for d in out["got"]] == [(b"m", 2)], out
        assert woken(waits["b1"])[-1], waits  # by the nack, not at its timeout
        assert (b1._one, b1._slot) == (True, word)  # moved to the group's word
        b2.close()
    finally:
        if t is not None:
            t.join(RECEIVE_S + 10)
        b1.close()
        h.close()


def test_an_aio_receive_without_a_doorbell_registered_without_a_word_gets_the_nack(
        broker: Any, tmp_broker_dir: Path) -> None:
    """The same on ``mqlite.aio`` (its rounds are ``Queue.receive_step``), with every
    doorbell taken, so that its wait sleeps on the word its step names (a doorbell is
    rung by every bump, on any word): the aio consumer registered with no word free
    gets the message b2 nacks long before its timeout (before D85: at it)."""
    topic_word = broker._engine.live_env().topic_slot("one")
    _fill(broker)
    broker.send("one", b"m")

    async def main() -> tuple[list[Any], float]:
        async with mqlite.aio.open(tmp_broker_dir, durability="none") as b:
            aq = await b.queue("one", "b", visibility_timeout=WAIT_S).start()
            assert aq._queue is not None and not aq._queue._one
            broker.delete_topic("spare")
            b2 = broker.queue("one", "b", visibility_timeout=WAIT_S)
            word = queue_word(broker, "one", "b")
            assert b2._slot == word
            held = b2.receive(1, timeout=WAIT_S)
            assert [d.value for d in held] == [b"m"]
            loop = asyncio.get_running_loop()
            task = asyncio.create_task(aq.receive(1, timeout=RECEIVE_S))
            await asyncio.to_thread(until_asleep, tmp_broker_dir, [word, topic_word], 1,
                                    total=True)
            t0 = loop.time()
            assert b2.nack(held) == 1
            got = await task
            took = loop.time() - t0
            out = [(d.value, d.delivery_count) for d in got]
            for d in got:
                await d.ack()
            await aq.close()
            b2.close()
            return out, took

    with every_doorbell_taken(broker.notifier):
        out, took = asyncio.run(main())
    assert out == [(b"m", 2)]
    assert took < RECEIVE_S / 2, f"woken after {took:.1f} s: at its timeout"
