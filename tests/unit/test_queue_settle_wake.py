"""D76: a settle that makes messages receivable again wakes one receiver of its own group.

A nack, an ``extend(0)`` or a ``close()`` releasing deliveries changes only the settling
queue group's pending entries: nothing is appended, so neither the topic's stream
consumers (the topic's word, its partitions' words, the global word 0) nor the other
queue groups of the topic have anything new.  Before D76 these settles called
``Env.notify_topics``, which woke one idle receiver of *every* group and bumped the
topic's and the global words.

And a receive whose wait saw its word moved without a wake-up taking it off the futex
queue (the wake-up went to another receiver) does not pass one on when it leaves
without a round (``Notifier.wait_woken``; D69's pass-on is for the one that was woken).

Counting wake-ups as tests/unit/test_queue_group_words.py does: every receive's blocking
wait (``receive._wait``) is wrapped to record whether it returned before its timeout.
Every group has a consumer holding two messages with the earliest deadline in flight, so
that nothing but the settle under test wakes anyone.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from _polling import queue_word, sleepers
from _queue_waits import count_waits, until_asleep, woken

import mqlite
from mqlite.queue import receive as _receive

#: The topics the ``broker`` fixture creates (tests/unit/conftest.py).  One partition:
#: a receive that took one message of two would wake the next receiver anyway (it did
#: not look at the other partition: D67's "more" chain).
BROKER_TOPICS = {"one": 1}
WAIT_S = 30.0
IDLE_S = 4.0  # the receives' timeout: a receiver nothing is for times out
HOLD_S = 20.0  # the holders' visibility timeout: earlier than anything else in flight
GROUPS = ("g1", "g2")


def _until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.001)


def _receiver(q: Any, out: dict[str, list[bytes]], name: str, timeout: float = IDLE_S,
              errors: dict[str, BaseException] | None = None) -> threading.Thread:
    """A thread ``name`` receiving one message of ``q`` for ``timeout`` s."""
    def run() -> None:
        try:
            out[name] = [d.value for d in q.receive(1, timeout=timeout)]
        except _Leave as exc:
            assert errors is not None
            errors[name] = exc
    return threading.Thread(target=run, name=name)


def _words(broker: Any, topic: str = "one") -> dict[str, int]:
    """The words a stream consumer of ``topic`` may sleep on: the topic's, its first
    partition's and the global word 0."""
    engine = broker._engine
    env = engine.live_env()
    with engine.read() as txn:
        pid = engine.topic(txn, topic).pids[0]
    n = env.notifier
    return {"topic": n.load(env.topic_slot(topic)),
            "partition": n.load(env.partition_slot(pid)), "global": n.load(0)}


def _setup(broker: Any, **policy: Any) -> tuple[dict[str, Any], dict[str, list[Any]],
                                                dict[str, Any]]:
    """Per group: a worker holding deliveries of "a" and "b" (the earliest deadline) and
    an idle receiver (one ``receive`` that found nothing, so it is idle)."""
    broker.send("one", b"a")
    broker.send("one", b"b")
    workers, held, idle = {}, {}, {}
    for g in GROUPS:
        w = workers[g] = broker.queue("one", g, visibility_timeout=HOLD_S, **policy)
        held[g] = w.receive(2, timeout=WAIT_S)
        assert [d.value for d in held[g]] == [b"a", b"b"]
        idle[g] = broker.queue("one", g)
        assert idle[g].receive(1, timeout=0.01) == []
    return workers, held, idle


class _Scene(NamedTuple):
    """:func:`_asleep`'s result."""
    workers: dict[str, Any]
    held: dict[str, list[Any]]
    records: dict[str, Any]  # count_waits: group -> its receivers' waits
    words: dict[str, int]  # group -> its wake-up word
    out: dict[str, list[bytes]]  # what each receiver thread got
    threads: list[threading.Thread]


def _asleep(broker: Any, tmp_broker_dir: Path, monkeypatch: pytest.MonkeyPatch,
            groups: tuple[str, ...] = GROUPS, **policy: Any) -> _Scene:
    """:func:`_setup`, then one receiver thread per group in ``groups`` on its idle
    consumer, returned once each is asleep on its group's word."""
    workers, held, idle = _setup(broker, **policy)
    records = count_waits(monkeypatch)
    words = {g: queue_word(broker, "one", g) for g in GROUPS}
    out: dict[str, list[bytes]] = {}
    threads = [_receiver(idle[g], out, g) for g in groups]
    for t in threads:
        t.start()
    until_asleep(tmp_broker_dir, [words[g] for g in groups], 1)
    return _Scene(workers, held, records, words, out, threads)


class _Leave(Exception):
    """Raised in a receive to make it leave without a round."""


@pytest.mark.parametrize("settle", ["nack", "extend0", "close"])
def test_a_settle_wakes_one_receiver_of_its_group_and_no_one_else(
        broker: Any, tmp_broker_dir: Path, monkeypatch: pytest.MonkeyPatch, settle: str) -> None:
    """g1's worker gives a message back (``nack``, ``extend(0)``, ``close``): g1's idle
    receiver is woken and gets it; g2's is never woken (it times out after ``IDLE_S``);
    the topic's, partition's and global words do not move, so no stream consumer of the
    topic is woken.  Before D76 g2's receiver was woken for nothing (its waits returned
    early, then timed out) and the three words moved."""
    workers, held, records, _, out, ts = _asleep(broker, tmp_broker_dir, monkeypatch)
    before = _words(broker)
    w = workers["g1"]
    if settle == "nack":
        assert w.nack(held["g1"][1], delay=0) == 1
    elif settle == "extend0":
        assert w.extend(held["g1"][1], 0) == 1
    else:
        w.close()  # releases a and b
    after = _words(broker)
    for t in ts:
        t.join(WAIT_S)
    assert out["g1"] == ([b"a"] if settle == "close" else [b"b"]), out
    if settle == "close":  # close() also wakes every receiver of its group (D74) first
        assert woken(records["g1"]) in ([True], [True, True]), records
    else:
        assert woken(records["g1"]) == [True], records  # woken once, by the settle
    assert out["g2"] == [], out
    assert woken(records["g2"]) == [False], records  # never woken: timed out
    assert after == before  # no stream consumer of "one" is woken


def test_an_extend_to_a_later_deadline_wakes_nobody(
        broker: Any, tmp_broker_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A later deadline makes nothing receivable sooner: no receiver is woken, and no word
    moves (before D76 every extend woke one receiver of each group)."""
    workers, held, records, words, out, ts = _asleep(broker, tmp_broker_dir, monkeypatch)
    n = broker._engine.live_env().notifier
    before = _words(broker), {g: n.load(w) for g, w in words.items()}
    assert workers["g1"].extend(held["g1"], HOLD_S + 5) == 2
    assert (_words(broker), {g: n.load(w) for g, w in words.items()}) == before
    for t in ts:
        t.join(WAIT_S)
    assert out == {"g1": [], "g2": []}
    assert woken(records["g1"]) == [False] and woken(records["g2"]) == [False], records


def test_a_dead_letter_wakes_the_dead_letter_topic_not_the_other_group(
        broker: Any, tmp_broker_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A move to the dead-letter topic is an append there: its words move (its stream
    consumers are woken); the source topic's words and the other group's do not."""
    broker.create_topic("dlq", partitions=1)
    workers, held, records, _, out, ts = _asleep(
        broker, tmp_broker_dir, monkeypatch, ("g2",), dead_letter_topic="dlq")
    before, dlq = _words(broker), _words(broker, "dlq")
    assert workers["g1"].dead_letter(held["g1"][1], "bad") == 1
    after = _words(broker, "dlq")
    assert after["topic"] != dlq["topic"] and after["partition"] != dlq["partition"]
    assert after["global"] != dlq["global"]
    assert _words(broker)["topic"] == before["topic"]
    for t in ts:
        t.join(WAIT_S)
    assert out == {"g2": []} and woken(records["g2"]) == [False], (out, records)


def _native_ids() -> dict[str, int]:
    return {t.name: t.native_id for t in threading.enumerate() if t.native_id is not None}


def _in_futex(tid: int) -> bool:
    """Thread ``tid`` is asleep (``S``): registered on a word, only its futex wait sleeps."""
    with open(f"/proc/self/task/{tid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "S"


def test_a_receive_that_saw_its_word_moved_but_was_not_woken_passes_nothing_on(
        broker: Any, tmp_broker_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three receivers of one group fall asleep in turn (A, B, C: the kernel's FIFO
    order); a send wakes A, which takes the message.  B's shorter wait ends at its
    timeout with the word moved (``wait_woken`` 1: the wake-up was A's) and B leaves
    without a round (its queue found closed).  B took no wake-up, so it passes none on:
    C is never woken and times out.  Before D76 any wait that returned ``True`` counted
    as woken: B passed a wake-up on and C was woken for nothing."""
    broker.send("one", b"held")
    holder = broker.queue("one", "g", visibility_timeout=HOLD_S)
    assert [d.value for d in holder.receive(1, timeout=WAIT_S)] == [b"held"]
    qs = {name: broker.queue("one", "g") for name in "ABC"}
    for q in qs.values():
        assert q.receive(1, timeout=0.01) == []  # idle: the next round looks first
    word = queue_word(broker, "one", "g")
    records = count_waits(monkeypatch)
    counted = _receive._wait

    def closed() -> None:
        raise _Leave("B's queue found closed")

    def hooked(n: Any, slot: int, seq: int, timeout: float) -> int:
        how = counted(n, slot, seq, timeout)
        if threading.current_thread().name == "B":
            qs["B"]._check_open = closed  # leave without a round
        return how

    monkeypatch.setattr(_receive, "_wait", hooked)
    out: dict[str, list[bytes]] = {}
    errors: dict[str, BaseException] = {}
    timeouts = {"A": WAIT_S, "B": 2.0, "C": IDLE_S}
    ts = {name: _receiver(qs[name], out, name, timeouts[name], errors) for name in "ABC"}
    for i, name in enumerate("ABC", 1):
        ts[name].start()
        _until(lambda: sleepers(tmp_broker_dir, word) >= i and name in _native_ids()  # noqa: B023
               and _in_futex(_native_ids()[name]), f"{name} asleep")  # noqa: B023
    broker.send("one", b"m")
    for t in ts.values():
        t.join(WAIT_S + 10)
    assert out.get("A") == [b"m"], (out, records)
    assert records["A"] == [(2, True)], records  # woken by the send (FIFO: the first)
    assert isinstance(errors.get("B"), _Leave), (errors, records)
    assert records["B"] == [(1, False)], records  # timed out, word moved: not woken
    assert out.get("C") == [], out
    assert woken(records["C"]) == [False], records  # nobody passed a wake-up on
    holder.close()


# -- the liveness reap of a killed receiver ---------------------------------------------

def _holds_one_then_blocks(path: str, ready: Any, conn: Any) -> None:
    """A g1 receiver in its own process: takes one message (visibility longer than the
    test), says so, then blocks on its pipe until it is killed."""
    with mqlite.open(path, durability="none") as b:
        q = b.queue("one", "g1", visibility_timeout=HOLD_S + 30)
        ds = q.receive(1, timeout=WAIT_S)
        conn.send([d.value for d in ds])
        ready.set()
        conn.recv()  # never answered: SIGKILL ends this process here


def test_the_reap_of_a_killed_receiver_wakes_one_receiver_of_its_group_only(
        broker: Any, tmp_broker_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A g1 receiver in another process holds message "c" and is SIGKILLed.  The reap
    that removes it (a g1 consumer's liveness watch in this process) releases "c" and
    wakes one receiver of g1 (D76: ``Queue._wake_receiver``): g1's idle receiver is woken
    and gets "c" long before its timeout; g2's idle receiver (g2 holds "c" itself) is
    never woken, and no stream consumer's word moves."""
    workers, _held, idle = _setup(broker)
    broker.send("one", b"c")
    assert [d.value for d in workers["g2"].receive(1, timeout=WAIT_S)] == [b"c"]
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    parent_end, child_end = ctx.Pipe()
    child = ctx.Process(target=_holds_one_then_blocks, args=(str(tmp_broker_dir), ready, child_end))
    child.start()
    try:
        assert ready.wait(60), "the child did not take its message"
        assert parent_end.recv() == [b"c"]
        records = count_waits(monkeypatch)
        words = {g: queue_word(broker, "one", g) for g in GROUPS}
        out: dict[str, list[bytes]] = {}
        ts = [_receiver(idle["g1"], out, "g1", timeout=WAIT_S), _receiver(idle["g2"], out, "g2")]
        for t in ts:
            t.start()
        until_asleep(tmp_broker_dir, words.values(), 1)
        before = _words(broker)
        child.kill()
        child.join(30)
        assert child.exitcode == -signal.SIGKILL
        for t in ts:
            t.join(WAIT_S + 10)
        assert out == {"g1": [b"c"], "g2": []}, (out, records)
        assert woken(records["g1"]) == [True], records  # woken by the reap
        assert woken(records["g2"]) == [False], records  # never woken: timed out
        assert _words(broker) == before  # nothing appended: no stream consumer woken
    finally:
        if child.is_alive():
            child.kill()
        child.join(10)
