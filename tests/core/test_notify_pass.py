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
