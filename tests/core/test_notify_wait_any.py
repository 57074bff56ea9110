"""``Notifier.wait_any`` (csrc/notify.h ``mq_notify_wait_any``, D64): one wait on several words."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from _polling import waiters_word

from mqlite import _core

#: A wait's timeout, and the bound that tells a wake-up from it (seconds).
WAIT_S = 30.0
WOKEN_S = 10.0


@pytest.fixture
def notifier(tmp_path: Path) -> _core.Notifier:
    return _core.Notifier(str(tmp_path / "n.shm"), 64)



def test_it_returns_at_once_when_a_word_already_moved(notifier: _core.Notifier) -> None:
    seqs = [notifier.load(3), notifier.load(5)]
    notifier.bump(5)
    assert notifier.wait_any([3, 5], seqs, WAIT_S) is True
    assert notifier.wait_any([3, 5], [notifier.load(3), notifier.load(5)], 0) is False


def test_it_times_out_when_nothing_moves(notifier: _core.Notifier) -> None:
    notifier.bump(7)  # not one of its words
    t0 = time.monotonic()
    assert notifier.wait_any([3, 5], [notifier.load(3), notifier.load(5)], 0.05) is False
    assert time.monotonic() - t0 >= 0.05


@pytest.mark.parametrize("which", [0, 1, 2])
def test_a_bump_of_any_of_its_words_wakes_it(notifier: _core.Notifier, which: int,
                                             tmp_path: Path) -> None:
    slots = [3, 5, 9]
    seqs = [notifier.load(s) for s in slots]
    entered = threading.Event()
    out: list[tuple[bool, float]] = []

    def wait() -> None:
        entered.set()
        t0 = time.monotonic()
        out.append((notifier.wait_any(slots, seqs, WAIT_S), time.monotonic() - t0))

    t = threading.Thread(target=wait)
    t.start()
    assert entered.wait(WAIT_S)
    notifier.bump(7)  # another word: it sleeps on (or re-checks and sleeps again)
    notifier.bump(slots[which])
    t.join(WAIT_S + 10)
    assert out and out[0][0] is True
    assert out[0][1] < WOKEN_S, f"woken after {out[0][1]:.1f} s"
    for s in slots:  # it left every word's waiter count as it found it
        assert waiters_word(tmp_path / "n.shm", s) == 0


@pytest.mark.parametrize(("slots", "seqs"), [([], []), ([1] * 17, [0] * 17), ([1, 1], [0, 0]),
                                             ([1, 2], [0]), ([1, 64], [0, 0])])
def test_bad_arguments_raise_value_error(notifier: _core.Notifier, slots: list[int],
                                         seqs: list[int]) -> None:
    if len(slots) == 17:
        slots = list(range(1, 18))
    with pytest.raises(ValueError):
        notifier.wait_any(slots, seqs, 0.01)
