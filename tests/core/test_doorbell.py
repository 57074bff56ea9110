"""csrc/doorbell.c: claiming, arming, ringing across processes, and dead owners' entries.

Contract (doorbell.h): a bump of an armed slot writes a byte into the FIFO of
every entry that armed it, in any process; an entry belongs to whoever holds
its OFD lock, so a dead owner's entry is free again; a claim clears the bits
a previous owner left; every entry taken is a clean ``EBUSY`` error.
"""

from __future__ import annotations

import errno
import os
import select
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mqlite import _core

SLOTS = 64


def _notifier(d: Path) -> _core.Notifier:
    n = _core.Notifier(str(d / "notify.shm"), SLOTS)
    n.attach_bells(str(d / "bells.shm"), str(d / "bells"))
    return n


def _readable(fd: int, timeout: float = 0.0) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def test_armed_slot_rings_and_unarmed_does_not(tmp_path: Path) -> None:
    n = _notifier(tmp_path)
    index, fd = n.bell_claim()
    fifo = tmp_path / "bells" / str(index)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert stat.S_IMODE(os.lstat(fifo).st_mode) == 0o600
    assert stat.S_IMODE(os.lstat(tmp_path / "bells").st_mode) == 0o700
    n.bump(3)
    assert not _readable(fd)
    n.bell_arm(index, 3)
    n.bump(5)
    assert not _readable(fd)
    n.bump(3)
    assert _readable(fd)
    _drain(fd)
    n.bell_disarm(index, 3)
    n.bump(3)
    assert not _readable(fd)
    n.bell_release(index, fd)
    assert not fifo.exists()
    n.close()


def test_bump_in_another_process_rings(tmp_path: Path) -> None:
    n = _notifier(tmp_path)
    index, fd = n.bell_claim()
    n.bell_arm(index, 7)
    code = (f"from mqlite import _core; n = _core.Notifier({str(tmp_path / 'notify.shm')!r}, "
            f"{SLOTS}); n.attach_bells({str(tmp_path / 'bells.shm')!r}, "
            f"{str(tmp_path / 'bells')!r}); n.bump(7)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert _readable(fd, 10.0)
    n.bell_release(index, fd)
    n.close()


def test_dead_owner_entry_is_reclaimed_with_clean_bits(tmp_path: Path) -> None:
    n = _notifier(tmp_path)
    code = (f"import os, sys, time; from mqlite import _core; "
            f"n = _core.Notifier({str(tmp_path / 'notify.shm')!r}, {SLOTS}); "
            f"n.attach_bells({str(tmp_path / 'bells.shm')!r}, {str(tmp_path / 'bells')!r}); "
            f"i, fd = n.bell_claim(); n.bell_arm(i, 9); print(i, flush=True); time.sleep(600)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        dead_index = int(child.stdout.readline())
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    n.bump(9)  # the dead owner's FIFO has no reader: ignored
    claims = [n.bell_claim() for _ in range(256)]  # every entry, the dead one included
    assert sorted(i for i, _ in claims) == list(range(256))
    with pytest.raises(OSError) as info:
        n.bell_claim()
    assert info.value.errno == errno.EBUSY
    fd = dict(claims)[dead_index]
    _drain(fd)
    n.bump(9)  # the bits the dead owner set were cleared by the claim
    assert not _readable(fd)
    for i, f in claims:
        n.bell_release(i, f)
    n.close()


def test_symlinked_fifo_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "bells")
    n = _notifier(tmp_path)
    with pytest.raises(OSError) as info:
        n.bell_claim()
    assert info.value.errno == errno.ELOOP
    assert os.listdir(tmp_path / "elsewhere") == []
    n.close()


def test_table_for_another_slot_count_is_refused(tmp_path: Path) -> None:
    _notifier(tmp_path).close()
    n = _core.Notifier(str(tmp_path / "notify2.shm"), SLOTS * 2)
    with pytest.raises(ValueError, match="another slot count"):
        n.attach_bells(str(tmp_path / "bells.shm"), str(tmp_path / "bells"))
    n.close()


def test_calls_after_close(tmp_path: Path) -> None:
    n = _notifier(tmp_path)
    index, fd = n.bell_claim()
    n.close()
    n.bell_release(index, fd)  # closes the descriptor; the close gave the entry back
    with pytest.raises(OSError):
        os.fstat(fd)
    with pytest.raises(ValueError):
        n.bell_claim()
    n.bell_disarm(index, 1)  # quietly nothing
