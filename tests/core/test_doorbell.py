"""csrc/doorbell.c: claiming, arming, ringing across processes, and dead owners' entries.

Contract (doorbell.h): a bump of an armed slot increments (and futex-wakes)
the ring word of every entry that armed it, in any process; an entry belongs
to whoever holds its OFD lock, so a dead owner's entry is free again; a claim
clears the bits a previous owner left; every entry taken is a clean
``EBUSY`` error.
"""

from __future__ import annotations

import errno
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mqlite import _core

SLOTS = 64


def _notifier(d: Path) -> _core.Notifier:
    n = _core.Notifier(str(d / "notify.shm"), SLOTS)
    n.attach_bells(str(d / "bells.shm"))
    return n


def test_armed_slot_rings_and_unarmed_does_not(tmp_path: Path) -> None:
    n = _notifier(tmp_path)
    index = n.bell_claim()
    r0 = n.bell_load(index)
    n.bump(3)
    assert n.bell_load(index) == r0
    n.bell_arm(index, 3)
    n.bump(5)
    assert n.bell_load(index) == r0
    assert n.bell_wait(index, r0, 0.0) is False
    n.bump(3)
    assert n.bell_load(index) == r0 + 1
    assert n.bell_wait(index, r0, 10.0) is True
    n.bell_disarm(index, 3)
    n.bump(3)
    assert n.bell_load(index) == r0 + 1
    n.bell_release(index)
    n.close()


def test_wait_blocks_until_a_ring_from_another_thread(tmp_path: Path) -> None:
    n = _notifier(tmp_path)
    index = n.bell_claim()
    n.bell_arm(index, 2)
    seen = n.bell_load(index)
    started = threading.Event()
    out: list[bool] = []

    def waiter() -> None:
        started.set()
        out.append(n.bell_wait(index, seen, 30.0))

    t = threading.Thread(target=waiter)
    t.start()
    started.wait(10)
    n.bump(2)
    t.join(30)
    assert out == [True]
    n.bell_release(index)
    n.close()


def test_bump_in_another_process_rings(tmp_path: Path) -> None:
    n = _notifier(tmp_path)
    index = n.bell_claim()
    n.bell_arm(index, 7)
    seen = n.bell_load(index)
    code = (f"from mqlite import _core; n = _core.Notifier({str(tmp_path / 'notify.shm')!r}, "
            f"{SLOTS}); n.attach_bells({str(tmp_path / 'bells.shm')!r}); n.bump(7)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert n.bell_wait(index, seen, 10.0) is True
    n.bell_release(index)
    n.close()


def test_dead_owner_entry_is_reclaimed_with_clean_bits(tmp_path: Path) -> None:
    n = _notifier(tmp_path)
    code = (f"import time; from mqlite import _core; "
            f"n = _core.Notifier({str(tmp_path / 'notify.shm')!r}, {SLOTS}); "
            f"n.attach_bells({str(tmp_path / 'bells.shm')!r}); "
            f"i = n.bell_claim(); n.bell_arm(i, 9); print(i, flush=True); time.sleep(600)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        dead_index = int(child.stdout.readline())
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    claims = [n.bell_claim() for _ in range(256)]  # every entry, the dead one included
    assert sorted(claims) == list(range(256))
    with pytest.raises(OSError) as info:
        n.bell_claim()
    assert info.value.errno == errno.EBUSY
    before = n.bell_load(dead_index)
    n.bump(9)  # the bits the dead owner set were cleared by the claim
    assert n.bell_load(dead_index) == before
    for i in claims:
        n.bell_release(i)
    n.close()


def test_release_wakes_the_waiter(tmp_path: Path) -> None:
    n = _notifier(tmp_path)
    index = n.bell_claim()
    seen = n.bell_load(index)
    n.bell_release(index)
    assert n.bell_wait(index, seen, 0.0) is True
    n.close()


def test_table_for_another_slot_count_is_refused(tmp_path: Path) -> None:
    _notifier(tmp_path).close()
    n = _core.Notifier(str(tmp_path / "notify2.shm"), SLOTS * 2)
    with pytest.raises(ValueError, match="another slot count"):
        n.attach_bells(str(tmp_path / "bells.shm"))
    n.close()


def test_symlinked_table_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "target"
    (tmp_path / "bells.shm").symlink_to(target)
    n = _core.Notifier(str(tmp_path / "notify.shm"), SLOTS)
    with pytest.raises(OSError) as info:
        n.attach_bells(str(tmp_path / "bells.shm"))
    assert info.value.errno == errno.ELOOP
    assert not target.exists()
    n.close()


def test_calls_after_close(tmp_path: Path) -> None:
    n = _notifier(tmp_path)
    index = n.bell_claim()
    n.close()
    n.bell_release(index)  # quietly nothing: the close gave the entry back
    n.bell_disarm(index, 1)
    n.bell_kick(index)
    with pytest.raises(ValueError):
        n.bell_claim()
    with pytest.raises(ValueError):
        n.bell_load(index)


def test_listener_writes_each_ring_to_an_eventfd_and_stops(tmp_path: Path) -> None:
    import os
    import select

    n = _notifier(tmp_path)
    index = n.bell_claim()
    n.bell_arm(index, 4)
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    t = threading.Thread(target=n.bell_listen, args=(index, efd))
    t.start()
    try:
        # The listener only sees rings after it has read the word: ring until it
        # reports one (a ring made before it started is not its to see).
        for _ in range(200):
            n.bump(4)
            if select.select([efd], [], [], 0.05)[0]:
                break
        else:
            raise AssertionError("10 s of rings and the listener never wrote the eventfd")
        assert int.from_bytes(os.read(efd, 8), "little") >= 1
    finally:
        n.bell_unlisten(index)
        t.join(10)
    assert not t.is_alive()
    os.close(efd)
    n.bell_release(index)
    n.close()
