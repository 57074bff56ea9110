"""Test helpers shared by the queue wake-up tests (D67, D69, D70, D74, D76).

The tests put a holder of each group on message "held" (its visibility deadline is
then the earliest in flight, so that no deadline wakes anybody), wait until their
receivers are registered asleep on notify words (``_polling.sleepers``), and stop the
receiver processes they spawned whatever the outcome.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from multiprocessing.process import BaseProcess
from typing import Any

from _polling import sleepers

__all__ = ["hold", "stop_children", "until_asleep"]


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
