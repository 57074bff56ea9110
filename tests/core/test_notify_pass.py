"""``Notifier.pass_on`` (csrc/notify.h ``mq_notify_pass``, D69): a woken waiter of a
one-at-a-time word passes its wake-up on, only when somebody waits."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from _polling import waiters_word

from mqlite import _core

WAIT_S = 30.0
WOKEN_S = 10.0


@pytest.fixture
def notifier(tmp_path: Path) -> _core.Notifier:
    return _core.Notifier(str(tmp_path / "n.shm"), 64)



def test_it_does_nothing_when_nobody_waits(notifier: _core.Notifier) -> None:
    seq = notifier.load(4)
    assert notifier.pass_on(4) is False
    assert notifier.load(4) == seq  # no store: later waiters read state before sleeping


def test_it_wakes_one_of_the_threads_asleep(notifier: _core.Notifier, tmp_path: Path) -> None:
    """Two threads asleep on a word: each pass_on wakes one of them (and moves the word)."""
    seq = notifier.load(9)
    woken: list[float] = []
    lock = threading.Lock()

    def sleep() -> None:
        t0 = time.monotonic()
        if notifier.wait(9, seq, WAIT_S):
            with lock:
                woken.append(time.monotonic() - t0)

    ts = [threading.Thread(target=sleep) for _ in range(2)]
    for t in ts:
        t.start()
    deadline = time.monotonic() + WAIT_S
    while waiters_word(tmp_path / "n.shm", 9) < 2:  # until both are registered
        assert time.monotonic() < deadline
        time.sleep(0.001)
    assert notifier.pass_on(9) is True
    assert notifier.load(9) == (seq + 1) & 0xFFFFFFFF
    while not woken:  # one of them returns
        assert time.monotonic() < deadline
        time.sleep(0.001)
    # FUTEX_WAKE of one: the other sleeps on (still registered) until the next pass
    assert waiters_word(tmp_path / "n.shm", 9) == 1
    assert len(woken) == 1
    assert notifier.pass_on(9) is True
    for t in ts:
        t.join(WOKEN_S)
    assert len(woken) == 2 and all(w < WOKEN_S for w in woken), woken
    assert waiters_word(tmp_path / "n.shm", 9) == 0
    assert notifier.pass_on(9) is False


def _in_futex(tid: int) -> bool:
    """Thread ``tid`` of this process is asleep (state ``S``): once registered in a
    slot's waiters word, the only place it can sleep is the futex wait on that word."""
    with open(f"/proc/self/task/{tid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "S"


def test_wait_woken_tells_a_wake_up_from_a_moved_word(notifier: _core.Notifier,
                                                      tmp_path: Path) -> None:
    """D76: ``wait_woken`` returns 2 only to the thread a ``bump_one`` took off the futex
    queue; the other, asleep on the same word, times out and finds the word moved: 1 (
    ``wait`` says ``True`` to both, so a receiver could not tell it took nothing)."""
    assert notifier.wait_woken(5, notifier.load(5), 0.01) == 0  # timed out
    assert notifier.wait_woken(5, (notifier.load(5) + 1) & 0xFFFFFFFF, WAIT_S) == 1  # moved
    seq = notifier.load(7)
    got: dict[str, tuple[int, float]] = {}
    tids: dict[str, int] = {}

    def sleep(name: str, timeout: float) -> None:
        tids[name] = threading.get_native_id()
        t0 = time.monotonic()
        rc = notifier.wait_woken(7, seq, timeout)
        got[name] = (rc, time.monotonic() - t0)

    first = threading.Thread(target=sleep, args=("first", WAIT_S))
    second = threading.Thread(target=sleep, args=("second", 2.0))
    deadline = time.monotonic() + WAIT_S
    for n, (name, t) in enumerate((("first", first), ("second", second)), 1):
        t.start()
        # registered, and asleep in the futex (so the kernel's FIFO order is theirs)
        while waiters_word(tmp_path / "n.shm", 7) < n or name not in tids or \
                not _in_futex(tids[name]):
            assert time.monotonic() < deadline
            time.sleep(0.001)
    notifier.bump_one(7)
    first.join(WOKEN_S)
    second.join(WOKEN_S)
    assert got["first"][0] == 2 and got["first"][1] < WOKEN_S, got  # woken (FIFO: first)
    assert got["second"][0] == 1 and got["second"][1] >= 2.0, got  # timed out, word moved
    assert waiters_word(tmp_path / "n.shm", 7) == 0
