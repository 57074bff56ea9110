"""Test helpers shared by the queue wake-up tests (D67, D69, D70, D74, D76).

The tests put a holder of each group on message "held" (its visibility deadline is
then the earliest in flight, so that no deadline wakes anybody), wait until their
receivers are registered asleep on notify words (``_polling.sleepers``), record what
each blocking wait of a receive returned (``count_waits``), and stop the receiver
processes they spawned whatever the outcome.  Their broker and its directory are the
``broker`` and ``tmp_broker_dir`` fixtures (tests/unit/conftest.py: each module names
its topics in ``BROKER_TOPICS``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from multiprocessing.process import BaseProcess
from typing import Any

import pytest
from _polling import sleepers

from mqlite.queue import receive as _receive

__all__ = ["Waits", "count_waits", "every_doorbell_taken", "hold", "stop_children",
           "until_asleep", "woken"]

#: Per thread name, each blocking wait of a receive: (``Notifier.wait_woken``'s code,
#: returned before its timeout).
Waits = dict[str, list[tuple[int, bool]]]


def hold(broker: Any, group: str, visibility_s: float, timeout: float = 30.0) -> Any:
    """A consumer of ``group`` of topic "one" holding message "held" (sent once, before
    any holder) for ``visibility_s`` seconds."""
    h = broker.queue("one", group, visibility_timeout=visibility_s)
    assert [d.value for d in h.receive(1, timeout=timeout)] == [b"held"]
    return h


def until_asleep(path: Any, slots: Iterable[int], n: int, *, total: bool = False,
                 timeout: float = 30.0) -> None:
    """Until ``n`` threads sleep on each of notify words ``slots`` of the broker in
    ``path`` (``total``: on all of them together), so that a bump from now on reaches
    them; fails after ``timeout`` seconds."""
    slots = tuple(slots)
    deadline = time.monotonic() + timeout

    def asleep() -> bool:
        counts = [sleepers(path, s) for s in slots]
        return sum(counts) >= n if total else all(c >= n for c in counts)

    while not asleep():
        assert time.monotonic() < deadline, {s: sleepers(path, s) for s in slots}
        time.sleep(0.001)


def stop_children(done: Any, children: Sequence[BaseProcess], holders: Iterable[Any]) -> None:
    """Let the receiver processes close (``done``), kill those still running after 30 s
    and close the holders."""
    done.set()
    for c in children:
        c.join(30)
        if c.is_alive():
            c.kill()
            c.join(10)
    for h in holders:
        h.close()


def count_waits(monkeypatch: pytest.MonkeyPatch | None = None) -> Waits:
    """Wrap ``receive._wait`` so that every blocking wait of a receive is recorded, per
    thread name: ``wait_woken``'s code (0 timed out, 1 saw the word moved at a check, 2
    woken: ``receive.WOKEN``, D76) and whether it returned before its timeout.  A wait
    that timed out may return 1, having found the word moved at its deadline (another
    receiver's wake-up was given since it loaded it), so "woken" is judged by both.

    Restored after the test through ``monkeypatch``; without it (a spawned child) the
    wrapper stays for the process's life.  Each thread appends to its own list only.
    """
    records: Waits = {}
    lock = threading.Lock()
    wait = _receive._wait

    def counted(n: Any, slot: int, seq: int, timeout: float) -> int:
        t0 = time.monotonic()
        how = wait(n, slot, seq, timeout)
        early = bool(how) and time.monotonic() - t0 < timeout
        with lock:
            records.setdefault(threading.current_thread().name, []).append((how, early))
        return how

    if monkeypatch is None:
        _receive._wait = counted
    else:
        monkeypatch.setattr(_receive, "_wait", counted)
    return records


def woken(waits: Sequence[tuple[int, bool]]) -> list[bool]:
    """Of each recorded wait (``count_waits``): returned before its timeout (woken)."""
    return [early for _, early in waits]


@contextlib.contextmanager
def every_doorbell_taken(n: Any) -> Iterator[None]:
    """Hold every doorbell of notifier ``n`` (an aio waiter then waits in worker-thread
    slices); release them on the way out."""
    from mqlite.aio import _bell

    claimed = [n.bell_claim() for _ in range(_bell.MAX_BELLS)]
    try:
        yield
    finally:
        for index in claimed:
            n.bell_release(index)
