"""D74: each queue group's receivers wait on a word of their own, woken one at a time.

A change that makes a message of a topic receivable wakes *one* receiver of *each* of the
topic's queue groups (D70 woke every idle receiver of a topic with several groups).
Writers find the groups' words in a per-process cache (``Env.queue_words``) that a
version word, bumped by every queue consumer's registration, invalidates.

Counting wake-ups: every receive's blocking wait (``receive._wait``) is wrapped to record
whether it was woken (``True``: it returned before its timeout) or timed out (``False``).  The
receivers wait ``IDLE_S``: the ones that do not get the message must time out without
ever being woken (no sleep in the test: the timeouts end the receives).  Every group has a
holder keeping a message in flight with the earliest deadline, so that deliveries bump
nobody on their own (as in steady work) and only the send can wake anyone.
"""

from __future__ import annotations

import multiprocessing as mp
import queue as _queue
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from _polling import queue_word, sleepers
from _queue_waits import Waits, count_waits, hold, stop_children, until_asleep, woken

import mqlite
from mqlite._storage import queues as _queues
from mqlite._storage.env import NOTIFY_SLOTS, QUEUE_WORD_FIRST

#: The topics the ``broker`` fixture creates (tests/unit/conftest.py).  One partition:
#: a receive that took one message of two would wake the next receiver anyway (it did
#: not look at the other partition: D67's "more" chain).
BROKER_TOPICS = {"one": 1}
WAIT_S = 30.0
IDLE_S = 4.0  # the receives' timeout: the receivers left without the message time out
HOLD_S = 20.0  # the holders' visibility timeout: earlier than the receivers' 30 s
GROUPS = ("g1", "g2")


def _check_one_per_group(results: list[tuple[str, list[bytes], list[bool]]],
                         n: int) -> None:
    for g in GROUPS:
        mine = [(got, waits) for grp, got, waits in results if grp == g]
        assert len(mine) == n, results
        winners = [waits for got, waits in mine if got == [b"m"]]
        losers = [waits for got, waits in mine if got != [b"m"]]
        assert len(winners) == 1, (g, mine)
        assert winners[0] == [True], (g, mine)  # woken once, by the send
        for waits in losers:
            assert waits == [False], (g, mine)  # never woken: timed out


def test_one_send_wakes_exactly_one_receiver_of_each_group(
        broker: Any, tmp_broker_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two groups with three idle receivers each: one send wakes one receiver of each
    (D70 woke all six: every loser's wait returned ``True`` before it timed out)."""
    n = 3
    broker.send("one", b"held")
    for g in GROUPS:
        hold(broker, g, HOLD_S)  # closed with the broker
    words = {g: queue_word(broker, "one", g) for g in GROUPS}
    assert words["g1"] != words["g2"]
    records = count_waits(monkeypatch)
    ready = threading.Barrier(2 * n + 1, timeout=WAIT_S)
    out: list[tuple[str, list[bytes], list[bool]]] = []
    ts: list[threading.Thread] = []
    for g in GROUPS:
        for i in range(n):
            ts.append(threading.Thread(target=_one_receiver,
                                       args=(broker, g, ready, out, records),
                                       name=f"{g}-{i}"))
    for t in ts:
        t.start()
    ready.wait()
    until_asleep(tmp_broker_dir, words.values(), n)
    broker.send("one", b"m")
    for t in ts:
        t.join(WAIT_S + 10)
    _check_one_per_group(out, n)
    broker.close()  # the consumers and holders with it


def _one_receiver(broker: Any, group: str, ready: threading.Barrier,
                  out: list[tuple[str, list[bytes], list[bool]]], records: Waits) -> None:
    """A consumer of ``group`` in this thread: finds nothing once, waits at ``ready``,
    then receives one message waiting up to ``IDLE_S``; reports (group, what it got, what
    the waits of that receive returned: woken or not).  Left open, holding what it got: a
    close would make it receivable again, for the group's next receiver."""
    name = threading.current_thread().name
    q = broker.queue("one", group)
    assert q.receive(1, timeout=0.01) == []
    ready.wait()
    before = len(records.get(name, ()))
    ds = q.receive(1, timeout=IDLE_S)
    out.append((group, [d.value for d in ds], woken(records.get(name, [])[before:])))


def _receivers_in_process(path: str, groups: tuple[str, ...], ready: Any, done: Any,
                          out: Any) -> None:
    """One receiver thread per group of ``groups`` in this (spawned) process, counted as
    in the thread test; each reports (group, what it got, what its waits returned).  The
    consumers close only once ``done`` is set: a close wakes every waiter of the word."""
    records = count_waits()  # a spawned child: nothing to restore
    with mqlite.open(path, durability="none") as b:
        qs = {g: b.queue("one", g) for g in groups}
        started = threading.Barrier(len(groups) + 1, timeout=WAIT_S)

        def work(g: str) -> None:
            q = qs[g]
            assert q.receive(1, timeout=0.01) == []
            before = len(records.get(g, ()))
            started.wait()
            ds = q.receive(1, timeout=IDLE_S)
            out.put((g, [d.value for d in ds], woken(records.get(g, [])[before:])))

        ts = [threading.Thread(target=work, args=(g,), name=g) for g in groups]
        for t in ts:
            t.start()
        started.wait()
        ready.set()
        for t in ts:
            t.join(WAIT_S + 10)
        done.wait(WAIT_S + 20)
        for q in qs.values():
            q.close()


def test_one_send_wakes_exactly_one_receiver_of_each_group_across_processes(
        broker: Any, tmp_broker_dir: Path) -> None:
    """Two processes, each with a receiver of each group (two idle receivers per group,
    one per process); the send comes from a third: one receiver of each group is woken."""
    broker.send("one", b"held")
    holders = [hold(broker, g, HOLD_S) for g in GROUPS]
    words = {g: queue_word(broker, "one", g) for g in GROUPS}
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    readies = [ctx.Event() for _ in range(2)]
    done = ctx.Event()
    children = [ctx.Process(target=_receivers_in_process,
                            args=(str(tmp_broker_dir), GROUPS, readies[i], done, out))
                for i in range(2)]
    for c in children:
        c.start()
    results = []
    try:
        for e in readies:
            assert e.wait(60)
        until_asleep(tmp_broker_dir, words.values(), 2)
        broker.send("one", b"m")
        for _ in range(4):
            try:
                results.append(out.get(timeout=WAIT_S + 10))
            except _queue.Empty:
                break
    finally:
        stop_children(done, children, holders)
    _check_one_per_group(results, 2)


def _late_group(path: str, ready: Any, out: Any) -> None:
    """Creates group g2 (after the test's writer cached the topic's groups), takes what
    is there (held: its deadline stays the earliest), sleeps in a receive and reports."""
    with mqlite.open(path, durability="none") as b:
        q = b.queue("one", "g2", visibility_timeout=HOLD_S)
        held = q.receive(10, timeout=0.01)
        ready.set()
        t0 = time.monotonic()
        ds = q.receive(1, timeout=WAIT_S)
        out.put(([d.value for d in ds], time.monotonic() - t0, len(held)))
        q.close()


@pytest.mark.parametrize("how", ["send", "send_batch"])
def test_a_group_created_after_a_writer_cached_the_groups_is_woken(
        broker: Any, tmp_broker_dir: Path, how: str) -> None:
    """The writer (this process) sent to the topic with g1 as its only group, so its
    cache names g1's word alone; then another process creates g2 and sleeps in a
    receive.  The writer's next send must wake it: g2's registration moved the version
    word, so the writer reads the groups again.  ``send``: the compiled path (SendPath);
    ``send_batch``: ``Env.commit``."""
    env = broker._engine.live_env()
    q1 = broker.queue("one", "g1")  # idle: nobody of g1 waits
    broker.send("one", b"warm")  # the cache: (version, (g1's word,))
    w1 = queue_word(broker, "one", "g1")
    assert env.queue_words_cache["one"][1] == (w1,)
    ctx = mp.get_context("spawn")
    ready, out = ctx.Event(), ctx.Queue()
    child = ctx.Process(target=_late_group, args=(str(tmp_broker_dir), ready, out))
    child.start()
    try:
        assert ready.wait(60)
        w2 = queue_word(broker, "one", "g2")
        deadline = time.monotonic() + WAIT_S
        while sleepers(tmp_broker_dir, w2) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        assert env.queue_words_cache["one"][1] == (w1,)  # stale until the next send
        if how == "send":
            broker.send("one", b"m")
        else:
            broker.send_batch("one", [b"m"])
        values, took, held = out.get(timeout=WAIT_S + 10)
    finally:
        child.join(WAIT_S)
        if child.is_alive():
            child.kill()
        q1.close()
    assert held == 1  # "warm", held: its deadline is earlier than the next delivery's
    assert values == [b"m"]
    assert took < WAIT_S / 3, f"g2's receiver got it after {took:.1f} s"
    assert set(env.queue_words_cache["one"][1]) == {w1, w2}


def test_queue_groups_get_distinct_words_and_deletion_frees_them(broker: Any) -> None:
    """Every queue group of every topic holds a word of its own (no two groups' one-at-a-
    time wake-ups can collide); a topic's deletion frees its groups' words."""
    broker.create_topic("two")
    qs = [broker.queue(t, g) for t in ("one", "two") for g in GROUPS]
    words = [q._slot for q in qs]
    assert all(q._one for q in qs)
    assert len(set(words)) == 4
    env = broker._engine.live_env()
    assert all(w != env.topic_slot(t) for w in words for t in ("one", "two"))
    for q in qs:
        q.close()
    broker.delete_topic("one")
    broker.create_topic("one")
    q = broker.queue("one", "g3")
    assert q._slot == min(words)  # the lowest free word again
    q.close()


def test_groups_beyond_the_word_table_still_get_messages_and_wake_ups(
        broker: Any, tmp_broker_dir: Path) -> None:
    """More queue groups than words (2,047, D74): a group registered with none left waits
    on its topic's word, which every change wakes in full, so a send and its own nack
    still wake its receivers; a topic's deletion frees its groups' words for new groups.
    Real registrations (about 1 ms each here: 2,047 take under 2 s)."""
    env = broker._engine.live_env()
    broker.create_topic("fill")
    for i in range(NOTIFY_SLOTS - QUEUE_WORD_FIRST - 1):
        broker.queue("fill", f"f{i}").close()  # the group keeps its word
    a = broker.queue("one", "a", visibility_timeout=WAIT_S)  # the last free word
    b1 = broker.queue("one", "b", visibility_timeout=WAIT_S)  # none left
    b2 = broker.queue("one", "b", visibility_timeout=WAIT_S)
    topic_word = env.topic_slot("one")
    assert (a._one, a._slot) == (True, NOTIFY_SLOTS - 1)
    assert (b1._one, b1._slot, b2._one, b2._slot) == (False, topic_word, False, topic_word)
    with broker._engine.read() as txn:
        assert _queues.word_of(txn, env.dbs, _queues.group_name("one", "b")) is None
    got: dict[str, list[Any]] = {}
    took: dict[str, float] = {}

    def receive(name: str, q: Any) -> threading.Thread:
        def run() -> None:
            t0 = time.monotonic()
            got[name] = q.receive(1, timeout=WAIT_S)
            took[name] = time.monotonic() - t0
        t = threading.Thread(target=run, name=name)
        t.start()
        return t

    def values(name: str) -> list[tuple[bytes, int]]:
        return [(d.value, d.delivery_count) for d in got[name]]

    # a send wakes a receiver of each group: "a" on its word, "b" on the topic's
    ts = [receive("a", a), receive("b2", b2)]
    until_asleep(tmp_broker_dir, [a._slot, topic_word], 1)
    broker.send("one", b"m")
    for t in ts:
        t.join(WAIT_S + 10)
    assert values("a") == [(b"m", 1)] and values("b2") == [(b"m", 1)]
    assert max(took.values()) < WAIT_S / 3, took
    # a nack in "b" wakes the other receiver of "b" (D76: the topic's word, in full)
    t = receive("b1", b1)
    until_asleep(tmp_broker_dir, [topic_word], 1)
    b2.nack(got["b2"])
    t.join(WAIT_S + 10)
    assert values("b1") == [(b"m", 2)] and took["b1"] < WAIT_S / 3, took
    # the deletion of "fill" frees its words: a new group gets the lowest, and a send
    # reaches its receiver there (the writer's cache moved with the version word)
    broker.delete_topic("fill")
    c = broker.queue("one", "c")
    assert (c._one, c._slot) == (True, QUEUE_WORD_FIRST)
    assert c.ack(c.receive(1, timeout=WAIT_S)) == 1  # "m": a new group starts at 0
    t = receive("c", c)
    until_asleep(tmp_broker_dir, [c._slot], 1)
    broker.send("one", b"n")
    t.join(WAIT_S + 10)
    assert values("c") == [(b"n", 1)] and took["c"] < WAIT_S / 3, took
    for q in (a, b1, b2, c):
        q.close()
