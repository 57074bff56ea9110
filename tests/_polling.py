"""Test helper: wait for a condition with a deadline (shared by the process suites)."""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from typing import Any


def wait_until(cond: Callable[[], Any], timeout: float, what: str, step: float = 0.005) -> Any:
    """Call ``cond`` until it returns something truthy (returned); fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)



def waiters_word(shm_path: Any, slot: int) -> int:
    """Notify slot ``slot``'s waiters word, read from the file at ``shm_path``
    (csrc/notify.h: ``{seq, waiters}`` per slot)."""
    with open(shm_path, "rb") as f:
        f.seek(slot * 8 + 4)
        return int(struct.unpack("=I", f.read(4))[0])


def sleepers(broker_dir: Any, slot: int) -> int:
    """Threads registered asleep on notify slot ``slot`` of the broker in ``broker_dir``
    (the low half of its waiters word in ``notify.shm``).  For tests that wait until
    receivers are asleep before they send (``wait_until``)."""
    return waiters_word(os.path.join(broker_dir, "notify.shm"), slot) & 0xFFFF


def queue_word(broker: Any, topic: str, group: str) -> int:
    """The wake-up word allocated to queue group ``group`` of ``topic`` (D74: its
    receivers sleep there, one woken per change), read from storage."""
    from mqlite._storage import queues

    env = broker._engine.live_env()
    with broker._engine.read() as txn:
        word = queues.word_of(txn, env.dbs, queues.group_name(topic, group))
    if word is None:
        raise AssertionError(f"queue group {group!r} of {topic!r} has no word")
    return word
